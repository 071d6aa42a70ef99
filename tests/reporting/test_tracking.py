"""reporting/tracking.py: runs logged to MLflow and TensorBoard are read back through their own APIs; a
tracking server that never answers or is lost mid-run is one error before any work, or one warning."""
from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import ROOT, TRAIN_OPTIONS, run_args
from PIL import Image

import train
from vitclassifier.errors import UserError
from vitclassifier.reporting.tracking import artifact_location, check_tracking_server, make_tracker

NEEDS_EXTRAS = "needs the extras: pip install -r requirements-extras.txt"
# as train.py's metrics.csv rows have them: text, and empty where a metric is not computed (no EMA)
EPOCHS = [{"val_acc": "0.5", "val_loss": 1.2, "train_loss": 1.5, "ema_val_acc": ""},
          {"val_acc": 0.75, "val_loss": 0.8, "train_loss": 0.9, "ema_val_acc": ""},
          {"val_acc": 0.875, "val_loss": 0.5, "train_loss": 0.6, "ema_val_acc": ""}]


@pytest.fixture
def outputs(tmp_path) -> tuple[list[Path], Path]:
    """A picture, a table and a checkpoint-like folder, as a training run leaves them."""
    Image.new("RGB", (64, 48), (200, 30, 30)).save(tmp_path / "curves.png")
    (tmp_path / "metrics.csv").write_text("epoch,val_acc\n1,0.5\n2,0.75\n")
    best = tmp_path / "best"
    best.mkdir()
    (best / "config.json").write_text("{}")
    (best / "model.safetensors").write_bytes(b"weights")
    return [tmp_path / "curves.png", tmp_path / "metrics.csv"], best


def log_a_run(tracker, files: list[Path], best: Path) -> None:
    tracker.log_params({"lr": 0.001, "data": Path("photos"), "freeze": None})
    for epoch, metrics in enumerate(EPOCHS, 1):
        tracker.log_epoch(epoch, metrics)
    tracker.log_files(files)
    tracker.log_model(best)


@pytest.mark.slow
def test_mlflow_run_reads_back_through_mlflow(tmp_path, outputs):
    mlflow_tracking = pytest.importorskip("mlflow.tracking", reason=NEEDS_EXTRAS)
    with make_tracker("mlflow", None, tmp_path / "out", run_name="tiny") as tracker:
        log_a_run(tracker, *outputs)
    client = mlflow_tracking.MlflowClient(f"sqlite:///{tmp_path / 'out' / 'mlruns' / 'mlflow.db'}")
    run = client.get_run(tracker.run_id)
    assert run.info.run_name == "tiny" and run.info.status == "FINISHED"
    assert run.data.params == {"lr": "0.001", "data": "photos", "freeze": "None"}
    history = client.get_metric_history(tracker.run_id, "val_acc")
    assert [(m.step, m.value) for m in history] == [(1, 0.5), (2, 0.75), (3, 0.875)]
    assert [m.value for m in client.get_metric_history(tracker.run_id, "val_loss")] == [1.2, 0.8, 0.5]
    assert set(run.data.metrics) == {"val_acc", "val_loss", "train_loss"}  # the empty one left out
    assert {a.path for a in client.list_artifacts(tracker.run_id)} == {"curves.png", "metrics.csv", "best"}
    assert {a.path for a in client.list_artifacts(tracker.run_id, "best")} == {"best/config.json",
                                                                               "best/model.safetensors"}
    assert run.info.artifact_uri.startswith((tmp_path / "out" / "mlruns").as_uri())  # all under --output-dir


@pytest.mark.slow
def test_mlflow_tracking_uri_and_run_states(tmp_path, monkeypatch):
    mlflow_tracking = pytest.importorskip("mlflow.tracking", reason=NEEDS_EXTRAS)
    monkeypatch.chdir(tmp_path)  # MLflow puts a given store's artifacts under the working directory
    uri = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    with pytest.raises(RuntimeError):
        with make_tracker("mlflow", uri, tmp_path / "out") as tracker:
            tracker.log_epoch(1, {"val_acc": 0.25})
            raise RuntimeError("training crashed")
    client = mlflow_tracking.MlflowClient(uri)
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FAILED" and run.data.metrics == {"val_acc": 0.25}
    with make_tracker("mlflow", uri, tmp_path / "out") as tracker:
        tracker.close("KILLED")  # stopped by a signal: the with-block's end keeps that status
    assert client.get_run(tracker.run_id).info.status == "KILLED"
    assert not (tmp_path / "out" / "mlruns").exists()


@pytest.mark.slow
def test_a_sqlite_store_keeps_its_files_beside_the_database_not_in_the_working_folder(tmp_path, outputs,
                                                                                        monkeypatch):
    mlflow_tracking = pytest.importorskip("mlflow.tracking", reason=NEEDS_EXTRAS)
    working = tmp_path / "working"
    working.mkdir()
    monkeypatch.chdir(working)
    uri = f"sqlite:///{tmp_path / 'runs' / 'tracking.db'}"
    (tmp_path / "runs").mkdir()
    with make_tracker("mlflow", uri, tmp_path / "out") as tracker:
        log_a_run(tracker, *outputs)
    run = mlflow_tracking.MlflowClient(uri).get_run(tracker.run_id)
    assert run.info.artifact_uri.startswith((tmp_path / "runs" / "tracking-artifacts").as_uri())
    assert (tmp_path / "runs" / "tracking-artifacts").is_dir() and list(working.iterdir()) == []


def test_where_a_store_keeps_its_files_and_a_two_slash_sqlite_uri_is_one_line(tmp_path):
    out = tmp_path / "out"
    assert artifact_location(None, out) == (out / "mlruns" / "artifacts").resolve().as_uri()
    assert artifact_location("sqlite:////data/x.db", out) == "file:///data/x-artifacts"
    assert artifact_location("sqlite:///x.db", out) == (Path.cwd() / "x-artifacts").as_uri()
    assert artifact_location("postgresql+psycopg2://me@db/runs", out) == artifact_location(None, out)
    assert artifact_location("http://127.0.0.1:5000", out) is None  # the server decides
    with pytest.raises(UserError, match=r"three slashes: sqlite:///x\.db \(relative"):
        artifact_location("sqlite://x.db", out)


@pytest.mark.slow
def test_an_unreachable_mlflow_server_is_a_clear_error(tmp_path, monkeypatch):
    pytest.importorskip("mlflow", reason=NEEDS_EXTRAS)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # fail at once instead of retrying for minutes
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    with pytest.raises(UserError, match="--tracking-uri http://127.0.0.1:9/: no MLflow server answered"):
        make_tracker("mlflow", "http://127.0.0.1:9/", tmp_path)  # port 9 (discard): nothing listens


def test_tensorboard_events_read_back(tmp_path, outputs):
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator",
                                      reason=NEEDS_EXTRAS)
    with make_tracker("tensorboard", None, tmp_path, run_name="tiny") as tracker:
        log_a_run(tracker, *outputs)
    events = accumulator.EventAccumulator(str(tmp_path / "tensorboard" / "tiny"))
    events.Reload()
    assert [(s.step, s.value) for s in events.Scalars("val_acc")] == [(1, 0.5), (2, 0.75), (3, 0.875)]
    assert set(events.Tags()["scalars"]) == {"val_acc", "val_loss", "train_loss"}
    image = events.Images("curves")[0]
    assert (image.width, image.height) == (64, 48)
    texts = {"params/text_summary", "metrics/text_summary", "best_model/text_summary"}
    assert texts <= set(events.Tags()["tensors"])


@pytest.mark.slow
def test_no_tracking_imports_nothing_and_logs_nothing(tmp_path):
    code = ("import sys; from pathlib import Path; from vitclassifier.reporting import tracking\n"
            f"t = tracking.make_tracker(None, None, Path({str(tmp_path)!r}))\n"
            "t.log_params({'lr': 1}); t.log_epoch(1, {'val_acc': 0.5}); t.log_model(Path('.')); t.close()\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('mlflow', 'tensorboard')"
            " or m.startswith('torch.utils.tensorboard')))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]" and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kind,package", [("mlflow", "mlflow"), ("tensorboard", "tensorboard")])
def test_a_missing_package_is_named_with_its_install_command(kind, package, tmp_path, monkeypatch):
    for name in [name for name in sys.modules if name.split(".")[0] == package] + [package]:
        monkeypatch.setitem(sys.modules, name, None)  # what Python does for a package that isn't installed
    with pytest.raises(UserError, match=f"--track {kind} needs the {package} package: pip install {package}"):
        make_tracker(kind, None, tmp_path)


def test_wrong_combinations_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="choose from mlflow, tensorboard"):
        make_tracker("wandb", None, tmp_path)
    with pytest.raises(UserError, match="--tracking-uri is for --track mlflow"):
        make_tracker("tensorboard", "http://127.0.0.1:5000", tmp_path)


# ---------------------------------------------------------------------------------------------
# INTEGRATION: train.py --track mlflow end to end (train.py's wiring of tracking.py)
# ---------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_train_logs_to_mlflow(tmp_path, tiny_vit, pattern_data, monkeypatch):
    mlflow_tracking = pytest.importorskip("mlflow.tracking", reason=NEEDS_EXTRAS)
    import train
    monkeypatch.chdir(tmp_path)  # MLflow puts a given store's artifacts in ./mlruns
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert train.main(["--data", str(pattern_data), "--model", str(tiny_vit),
                       "--output-dir", str(tmp_path / "out"), *TRAIN_OPTIONS, "--epochs", "1",
                       "--track", "mlflow", "--tracking-uri", uri]) == 0
    client = mlflow_tracking.MlflowClient(uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    history = client.get_metric_history(runs[0].info.run_id, "val_acc")
    assert [m.step for m in history] == [1] and 0 <= history[0].value <= 1
    assert runs[0].data.params["epochs"] == "1"
    assert "best" in {a.path for a in client.list_artifacts(runs[0].info.run_id)}


@pytest.fixture
def silent_server():
    """A port that accepts connections and never answers (a firewall or a hung server)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    server.close()


def test_a_tracking_server_that_never_answers_is_one_quick_error(silent_server):
    started = time.monotonic()
    with pytest.raises(UserError, match="no MLflow server answered within 1 s.*leave out --tracking-uri"):
        check_tracking_server(silent_server, timeout=1)
    assert time.monotonic() - started < 10
    check_tracking_server("sqlite:///somewhere.db", timeout=1)  # stores are opened by MLflow itself


@pytest.mark.slow
def test_training_with_an_unreachable_tracking_server_stops_before_any_work(silent_server, tmp_path,
                                                                            tiny_vit, pattern_data, capsys):
    out = tmp_path / "out"
    started = time.monotonic()
    argv = run_args(out, pattern_data, tiny_vit) + ["--track", "mlflow", "--tracking-uri", silent_server]
    assert train.main(argv) == 2
    assert time.monotonic() - started < 60
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no MLflow server answered" in err[0] and "nothing was trained" in err[0]
    assert not out.exists()


@pytest.mark.slow
def test_a_tracking_server_lost_mid_run_is_one_warning_and_training_goes_on(tmp_path, monkeypatch, capsys):
    pytest.importorskip("mlflow", reason="needs the extras: pip install -r requirements-extras.txt")
    from mlflow.tracking import MlflowClient
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    tracker = make_tracker("mlflow", None, tmp_path)
    tracker.client = MlflowClient("http://127.0.0.1:9")  # the server went away: port 9 has no listener
    tracker.log_epoch(1, {"val_acc": 0.5})
    tracker.log_epoch(2, {"val_acc": 0.6})  # tracking is off now: no second wait, no second warning
    tracker.close()
    err = capsys.readouterr().err
    assert err.count("warning: MLflow") == 1 and "training goes on" in err

