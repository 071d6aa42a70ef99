"""A new user's first hour (issue 18): what a run does at its edges (early stop then resume, every image
of an epoch, an unreachable tracking server), calibration a validation set can support, folded into
the checkpoint so every consumer agrees, file modes, and the messages that point the way."""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time

import pytest
import torch
from helpers import CLASSES, ROOT, make_pattern_folder, read_rows, run_args, write_small_images

import predict
import train
from vitclassifier.errors import UserError
from vitclassifier.files import atomic_write_text, current_umask, give_default_mode
from vitclassifier.model.checkpoint import fold_temperature, load_checkpoint, read_info, save_model
from vitclassifier.model.vit import create_model
from vitclassifier.reporting.calibration import calibrate
from vitclassifier.reporting.tracking import check_tracking_server, make_tracker
from vitclassifier.text import shell_word
from vitclassifier.training import trainer
from vitclassifier.training.resume import RESUME_FREE


def snapshot(run) -> dict:
    """Every file of a run folder with its bytes and modification time."""
    return {path: (path.read_bytes(), path.stat().st_mtime_ns) for path in run.rglob("*") if path.is_file()}


# -- bug 1: a finished run stays finished --------------------------------------------------------------
@pytest.mark.slow
def test_an_early_stopped_run_resumes_as_already_finished(tmp_path, tiny_vit, pattern_data, monkeypatch,
                                                          capsys):
    out = tmp_path / "my run"  # a space: the suggested commands must quote it
    monkeypatch.setitem(trainer.SELECT_BY, "accuracy", lambda stats: (0.0,))  # no epoch beats the first
    argv = run_args(out, pattern_data, tiny_vit) + ["--epochs", "4", "--patience", "1"]
    assert train.main(argv) == 0
    printed = capsys.readouterr().out
    assert "Early stop: no better validation score for 1 epoch\n" in printed
    assert len(read_rows(out / "metrics.csv")) == 2  # epoch 1, then one epoch without improvement
    suggested = printed.split("try: ")[1].split(")")[0]
    assert shlex.split(suggested)[3] == str(out / "best")  # the suggested command, as the shell reads it
    before = snapshot(out)
    for resume in (["--resume"], ["--resume", "auto"]):
        assert train.main(argv + resume) == 0
        assert "already finished" in capsys.readouterr().out
        assert snapshot(out) == before  # not one file written, not even rewritten with the same bytes


# -- bug 6: every image, every epoch ---------------------------------------------------------------------
@pytest.mark.slow
def test_every_training_image_is_used_and_a_smaller_last_step_keeps_the_big_batch_maths(tmp_path, tiny_vit):
    data = make_pattern_folder(tmp_path / "data", per_class=38)  # 114 images: 90 train, not a multiple of 16
    options = ["--epochs", "1", "--dropout", "0", "--label-smoothing", "0"]
    runs = {}
    for name, batch in (("accumulated", ["--batch-size", "4", "--grad-accum", "4"]),
                        ("big", ["--batch-size", "16"])):
        out = tmp_path / name
        assert train.main(run_args(out, data, tiny_vit) + options + batch) == 0
        runs[name] = read_rows(out / "metrics.csv")[0]
        info = json.loads((out / "best" / "training_info.json").read_text())
        assert info["train_images"] == 90 and info["val_images"] == 24  # as the summary line says
    for column in ("train_loss", "train_acc", "val_loss", "val_acc"):
        assert float(runs["accumulated"][column]) == pytest.approx(float(runs["big"][column]), abs=1e-4)


# -- bug 2: an unreachable tracking server --------------------------------------------------------------
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


# -- bug 4: a temperature the validation set can support ---------------------------------------------------
def overconfident(count: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits right about 2/3 of the time and far too sure of themselves."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 4, (count,), generator=generator)
    logits = torch.randn(count, 4, generator=generator) * 2
    logits[torch.arange(count), labels] += 1.5
    return logits * 4, labels


def evaluation(logits: torch.Tensor, labels: torch.Tensor) -> dict:
    return {"logits": logits, "labels": labels, "acc": (logits.argmax(1) == labels).float().mean().item()}


def test_a_large_validation_set_gets_the_temperature_it_supports():
    result = calibrate(evaluation(*overconfident(2000)))
    low, high = result["temperature_range"]
    assert low <= result["temperature_fitted"] <= high and high / low < 1.3  # 2000 images pin T down
    assert result["temperature"] == pytest.approx(result["temperature_fitted"], rel=0.1)
    assert result["ece_after"] < result["ece_before"] / 2


def test_a_tiny_validation_set_cannot_push_the_temperature_to_its_cap():
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 5, (10,), generator=generator)
    logits = torch.randn(10, 5, generator=generator)
    logits[torch.arange(10), labels] += 10  # 8 of 10 right, sure of themselves ...
    logits[:2] = 0
    logits[torch.arange(2), (labels[:2] + 1) % 5] = 30  # ... and 2 mistakes, far surer still
    result = calibrate(evaluation(logits, labels))
    assert result["temperature_fitted"] > 10  # what the bare fit asks for on these 10 images
    assert result["temperature"] < result["temperature_fitted"] / 2
    assert "10 validation images support" in result["calibration"]


def test_a_model_near_chance_is_said_to_be_so():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(3000, 5, generator=generator) * 3  # scores that say nothing about the labels
    result = calibrate(evaluation(logits, torch.randint(0, 5, (3000,), generator=generator)))
    assert "barely tells the classes apart" in result["calibration"]


# -- bug 5: the temperature folded into the head ---------------------------------------------------------
@pytest.fixture(scope="module")
def unfolded(trained_run, tmp_path_factory):
    """The trained checkpoint with its head as training left it (T = 1) and an image to predict."""
    folder = tmp_path_factory.mktemp("unfolded")
    model, prep, labels = load_checkpoint(trained_run / "best")
    save_model(model, prep, folder / "best", info={"labels": labels})
    return folder / "best", write_small_images(folder, 1) / "0.png"


def confidences(model_dir, image, tmp_path) -> dict[str, float]:
    out = tmp_path / f"answers-of-{model_dir.name}.json"  # not MODEL.json: an export's own sidecar
    assert predict.main(["--model", str(model_dir), "--image", str(image), "--json", str(out),
                         "--precision", "fp32", "--top-k", "3"]) == 0
    result = json.loads(out.read_text())["results"][0]
    return {p["label"]: p["confidence"] for p in result["predictions"]}


@pytest.mark.slow
def test_pipeline_predict_and_an_old_unfolded_checkpoint_agree(unfolded, tmp_path):
    from transformers import pipeline
    source, image = unfolded
    model, prep, _ = load_checkpoint(source)
    folded = tmp_path / "folded"
    save_model(model, prep, folded, info={})
    fold_temperature(folded, {"temperature": 3.0})
    info = read_info(folded)
    assert info["temperature"] == 1.0 and info["temperature_folded"] == 3.0  # nothing left to divide
    old = tmp_path / "old"  # a checkpoint of an earlier version: unfolded head, T in training_info.json
    save_model(model, prep, old, info={"temperature": 3.0})
    ours, older = confidences(folded, image, tmp_path), confidences(old, image, tmp_path)
    theirs = {answer["label"]: answer["score"]
              for answer in pipeline("image-classification", model=str(folded))(str(image), top_k=3)}
    plain = confidences(source, image, tmp_path)  # T = 1: sharper than either
    assert set(ours) == set(theirs) == set(older) == set(CLASSES)
    for label in CLASSES:
        assert ours[label] == pytest.approx(theirs[label], abs=1e-4) == pytest.approx(older[label], abs=1e-4)
    assert max(plain.values()) > max(ours.values()) + 1e-3  # the temperature did change something


def test_a_folded_temperature_is_checked_like_any_temperature(tmp_path):
    (tmp_path / "training_info.json").write_text(json.dumps({"temperature": 1.0, "temperature_folded": -2}))
    with pytest.raises(UserError, match="temperature must be a finite number above 0"):
        read_info(tmp_path)


@pytest.mark.slow
def test_training_folds_its_calibration_into_best(trained_run):
    info = read_info(trained_run / "best")
    assert info["temperature"] == 1.0 and info["temperature_folded"] > 0 and info["calibration"]


# -- file modes ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_written_files_get_the_mode_the_umask_gives(tmp_path, tiny_vit, umask):
    previous = os.umask(umask)
    try:
        model, prep = create_model(str(tiny_vit), ["a", "b"])
        save_model(model, prep, tmp_path / "best", info={})  # safetensors alone would write 0600
        atomic_write_text(tmp_path / "metrics.csv", "epoch\n")
        (tmp_path / "private").write_text("x")
        os.chmod(tmp_path / "private", 0o600)
        give_default_mode(tmp_path / "private")
    finally:
        os.umask(previous)
    files = [*(tmp_path / "best").iterdir(), tmp_path / "metrics.csv", tmp_path / "private"]
    assert {path.name: oct(path.stat().st_mode & 0o777) for path in files} == {
        path.name: oct(0o666 & ~umask) for path in files}
    assert (tmp_path / "best").stat().st_mode & 0o777 == 0o777 & ~umask


# -- messages ---------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_predict_on_a_run_folder_points_to_its_best_model(trained_run, tmp_path, capsys):
    image = write_small_images(tmp_path, 1) / "0.png"
    assert predict.main(["--model", str(trained_run), "--image", str(image)]) == 2
    err = capsys.readouterr().err
    assert f"--model {shell_word(trained_run / 'best')}" in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")  # deprecated, still works
def test_predict_runs_torchscript_and_int8_exports_and_names_what_runs(trained_run, tmp_path, capsys):
    import export
    image = write_small_images(tmp_path, 1) / "0.png"
    answers = {}
    for fmt, suffix in (("torchscript", ".torchscript.pt"), ("int8", ".int8.pt")):
        model = tmp_path / f"model{suffix}"
        assert export.main(["--model", str(trained_run / "best"), "--format", fmt, "--out", str(model),
                            "--bench-rounds", "0"]) == 0
        answers[fmt] = confidences(model, image, tmp_path)
    checkpoint = confidences(trained_run / "best", image, tmp_path)
    assert max(answers["torchscript"], key=answers["torchscript"].get) == max(checkpoint, key=checkpoint.get)
    assert answers["torchscript"] == pytest.approx(checkpoint, abs=1e-4)
    assert set(answers["int8"]) == set(checkpoint)
    capsys.readouterr()
    (tmp_path / "model.bin").write_bytes(b"not a model")
    assert predict.main(["--model", str(tmp_path / "model.bin"), "--image", str(image)]) == 2
    err = capsys.readouterr().err
    assert "a file this tool cannot run" in err and ".onnx, .xml, .pt" in err and ".int8.pt" in err


@pytest.mark.slow
def test_evaluate_without_model_scores_checkpoints_best_or_asks_for_one(trained_run, tmp_path, monkeypatch,
                                                                       capsys):
    data = make_pattern_folder(tmp_path / "data", per_class=3)
    monkeypatch.chdir(tmp_path)
    assert train.main(["--evaluate", "--data", str(data)]) == 2
    assert "--evaluate needs --model" in capsys.readouterr().err
    shutil.copytree(trained_run / "best", tmp_path / "checkpoints" / "best")
    assert train.main(["--evaluate", "--data", str(data), "--output-dir", str(tmp_path / "scores")]) == 0
    assert "Scoring checkpoints/best" in capsys.readouterr().out
    assert (tmp_path / "scores" / "per_class.csv").is_file()


def test_a_preset_typo_gets_a_suggestion_with_no_pretrained_too():
    with pytest.raises(UserError, match="Did you mean vit-tiny"):
        create_model("vit-tiy", ["a", "b"], pretrained=False)


def test_flags_show_no_default_in_help(capsys):
    help_text = train.build_parser().format_help()
    assert "--no-calibrate" in help_text and "(default: True)" not in help_text
    assert "(default: False)" not in help_text and "(default: 42)" in help_text


def test_shell_words_quote_what_the_shell_would_split():
    assert shell_word("checkpoints/best") == "checkpoints/best"
    assert shlex.split(f"--model {shell_word('my runs/best')}") == ["--model", "my runs/best"]


# -- the docs: every option of every command ------------------------------------------------------------
def command_options(capsys) -> dict[str, set[str]]:
    """The long options each command's --help lists."""
    import app
    import classifier
    import export
    options = {}
    commands = {"train.py": train.main, "predict.py": predict.main, "export.py": export.main,
                "app.py": app.parse_args, "classifier.py": classifier.main}
    for name, show_help in commands.items():
        with pytest.raises(SystemExit):
            show_help(["--help"])
        listed = re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", capsys.readouterr().out)
        options[name] = set(listed) - {"--help"}
    return options


def test_every_option_of_every_command_is_documented(capsys):
    docs = "\n".join(path.read_text() for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))])
    undocumented = {name: sorted(option for option in options if f"`{option}" not in docs)
                    for name, options in command_options(capsys).items()}
    assert undocumented == {name: [] for name in undocumented}


# -- export speed lines -------------------------------------------------------------------------------------
def test_export_speeds_are_timed_in_turns_and_a_noisy_speed_up_is_left_out():
    from vitclassifier.export.check import TURN_PAUSE, speed_report, timed_in_turns
    now, calls, pauses = [0.0], [], []  # a clock that moves only when a model runs: no machine's load counts

    def model(name, seconds):
        return lambda batch: (calls.append(name), now.__setitem__(0, now[0] + seconds))
    runs = [model("torch", 2**-6), model("export", 2**-7)]  # powers of two: the sums are exact
    base, exported = timed_in_turns(runs, torch.zeros(1), 3, clock=lambda: now[0], pause=pauses.append)
    assert calls == ["torch", "export"] * 5 and pauses == [TURN_PAUSE] * 10  # 2 warm-up rounds, in turns
    assert base == [2**-6] * 3 and exported == [2**-7] * 3  # the warm-up rounds left out
    steady = speed_report("Engine", base, exported, 32, None)
    assert "Engine" in steady and "2.00x PyTorch's speed" in steady and "left out" not in steady
    noisy = speed_report("Engine", [0.02, 0.02, 0.02], [0.01, 0.04, 0.002], 32, None)
    assert "speed-up left out: it varied from 0.50x to 10.00x" in noisy and "x PyTorch's speed" not in noisy


def test_the_documented_options_that_may_change_on_resume_are_the_code_s():
    text = " ".join((ROOT / "docs" / "safety.md").read_text().split())
    listed = text.split("(`RESUME_FREE` in `training/resume.py`):")[1].split(".")[0]
    in_code = {f"--{name.replace('_', '-')}" for name in RESUME_FREE}
    assert set(re.findall(r"`(--[a-z-]+)`", listed)) == in_code


# -- the offline quick start: the from-scratch recipe, and data generated without loading torch ------
def test_a_small_model_from_scratch_gets_small_patches_recorded_in_its_checkpoint(tmp_path):
    model, prep = create_model("vit-tiny", CLASSES, pretrained=False, image_size=48)
    assert model.config.patch_size == 8 and model.vit.embeddings.position_embeddings.shape[1] == 1 + 6 * 6
    save_model(model, prep, tmp_path / "best", info={})
    loaded, loaded_prep, labels = load_checkpoint(tmp_path / "best")
    assert loaded.config.patch_size == 8 and loaded_prep.image_size == 48 and labels == CLASSES
    assert loaded(pixel_values=torch.zeros(2, 3, 48, 48)).logits.shape == (2, 3)
    big, _ = create_model("vit-tiny", CLASSES, pretrained=False, image_size=224)
    assert big.config.patch_size == 16  # the presets' own patches where they were made for
    with pytest.raises(UserError, match="multiple of the patch size 8"):
        create_model("vit-tiny", CLASSES, pretrained=False, image_size=44)


def test_generating_data_loads_no_torch_and_the_front_door_still_hands_out_the_library(tmp_path):
    script = ("import sys, classifier\n"
              "code = classifier.main(['--generate-data', '--per-class', '2', '--image-size', '16',"
              f" '--out', {str(tmp_path / 'data')!r}, '--samples-dir', {str(tmp_path)!r}])\n"
              "assert code == 0 and 'torch' not in sys.modules and 'transformers' not in sys.modules\n"
              "from classifier import create_model, ImageFolderDataset, eval_transform\n"
              "assert callable(create_model) and 'torch' in sys.modules\n"
              "assert set(classifier.__all__) >= {'generate_data', 'create_model', 'load_splits'}\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    generated = list((tmp_path / "data").rglob("*.jpg"))
    assert len(generated) == 2 * 5
    assert {path.stat().st_mode & 0o777 for path in generated} == {0o666 & ~current_umask()}
