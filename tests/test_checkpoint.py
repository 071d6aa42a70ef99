"""Never lose work: atomic checkpoints, stopping on a signal, exact resume, determinism, strict inputs."""
from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

import checkpoint
import predict
import train
from vitclassifier.model.checkpoint import atomic_write_dir, check_output_dir, load_checkpoint, save_model
from vitclassifier.errors import UserError
from conftest import ROOT, TRAIN_OPTIONS
from vitclassifier.training.resume import StopSignal

COMPARED = ("train_loss", "train_acc", "val_loss", "val_acc", "val_top3", "val_macro_f1", "lr")


def read_rows(path):
    import csv
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def assert_same_metrics(a_dir, b_dir):
    a_rows, b_rows = read_rows(a_dir / "metrics.csv"), read_rows(b_dir / "metrics.csv")
    assert [r["epoch"] for r in a_rows] == [r["epoch"] for r in b_rows]
    for a, b in zip(a_rows, b_rows):
        for name in COMPARED:
            assert float(a[name]) == pytest.approx(float(b[name]), abs=1e-6), (a["epoch"], name)


def run_args(out, data, model):
    return ["--data", str(data), "--model", str(model), "--output-dir", str(out), *TRAIN_OPTIONS]


# ---------------------------------------------------------------------------
# Atomic checkpoints
# ---------------------------------------------------------------------------
def test_a_failed_save_leaves_the_previous_checkpoint_intact(trained_run, tmp_path, monkeypatch):
    target = tmp_path / "best"
    shutil.copytree(trained_run / "best", target)
    model, prep, _ = load_checkpoint(target)
    before = (target / "model.safetensors").read_bytes()

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(checkpoint.torch, "save", disk_full)
    with torch.no_grad():
        model.classifier.weight.add_(1.0)
    with pytest.raises(UserError, match="No space left.*previous checkpoint there is intact"):
        save_model(model, prep, target, training_state={"epoch": 1})
    assert (target / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]  # no best.tmp or best.old left
    load_checkpoint(target)


def test_a_writer_killed_mid_save_leaves_the_previous_checkpoint(tmp_path):
    target = tmp_path / "ckpt"
    atomic_write_dir(target, lambda d: (d / "weights.bin").write_bytes(b"old" * 1000))
    writer = subprocess.Popen([sys.executable, "-c", f"""
import sys, time
sys.path.insert(0, {str(ROOT)!r})
from vitclassifier.model.checkpoint import atomic_write_dir
def slow(d):
    with open(d / "weights.bin", "wb") as f:
        for _ in range(10_000):
            f.write(b"new" * 10_000)
            print("writing", flush=True)
            time.sleep(0.01)
atomic_write_dir({str(target)!r}, slow)
"""], stdout=subprocess.PIPE, text=True)
    assert writer.stdout.readline().strip() == "writing"
    writer.kill()  # SIGKILL: no cleanup code runs
    writer.wait()
    assert (target / "weights.bin").read_bytes() == b"old" * 1000
    atomic_write_dir(target, lambda d: (d / "weights.bin").write_bytes(b"next"))  # the leftover .tmp is cleared
    assert (target / "weights.bin").read_bytes() == b"next"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_a_crash_between_the_renames_is_recovered_on_load(trained_run, tmp_path):
    shutil.copytree(trained_run / "best", tmp_path / "best.old")  # NAME renamed away, new one not yet in
    model, _, labels = load_checkpoint(tmp_path / "best")
    assert (tmp_path / "best" / "model.safetensors").is_file() and len(labels) == 3


# ---------------------------------------------------------------------------
# Signals and exact resume
# ---------------------------------------------------------------------------
def test_sigint_mid_epoch_saves_and_resume_matches_the_uninterrupted_run(tmp_path, tiny_vit, pattern_data,
                                                                           trained_run):
    out = tmp_path / "run"
    process = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *run_args(out, pattern_data, tiny_vit)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (out / "metrics.csv").exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    time.sleep(0.5)
    process.send_signal(signal.SIGINT)  # epoch 1 is saved; epoch 2 is under way
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "Stopped in epoch 2 after step" in err and "--resume" in err
    state = torch.load(out / "last" / "training_state.pt", weights_only=True)
    assert state["epoch"] == 2 and 0 <= state["step"] < 120  # 120 steps per epoch

    assert train.main(["--resume", str(out)]) == 0  # the other options come from the save
    assert_same_metrics(out, trained_run)
    assert (out / "best" / "model.safetensors").read_bytes() == (trained_run / "best" / "model.safetensors").read_bytes()


def test_a_second_signal_stops_at_once():
    with StopSignal(announce=False) as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.signum == signal.SIGTERM  # the first one only asks to stop
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_resume_refuses_changed_options_and_changed_data(trained_run, tmp_path, pattern_data, tiny_vit, capsys):
    assert train.main(["--resume", str(trained_run), "--lr", "0.5", "--seed", "7"]) == 2
    err = capsys.readouterr().err
    assert "--lr: was 0.001, now 0.5" in err and "--seed: was 1, now 7" in err
    extra = pattern_data / "plain" / "extra.png"
    shutil.copy(pattern_data / "plain" / "plain_000.png", extra)  # the same folder, one file more
    try:
        assert train.main(["--resume", str(trained_run)]) == 2
    finally:
        extra.unlink()
    assert "changed since that run" in capsys.readouterr().err


def test_resume_auto_starts_afresh_when_there_is_nothing_to_resume(tmp_path, tiny_vit, pattern_data, capsys):
    out = tmp_path / "run"
    argv = run_args(out, pattern_data, tiny_vit) + ["--epochs", "1", "--resume", "auto"]
    assert train.main(argv) == 0
    assert "starting afresh" in capsys.readouterr().out
    assert train.main(argv) == 0  # now there is a finished run: nothing left to do
    assert "already finished" in capsys.readouterr().out
    assert len(read_rows(out / "metrics.csv")) == 1


# ---------------------------------------------------------------------------
# Determinism
# ---------------------------------------------------------------------------
def test_same_seed_same_metrics_and_same_checkpoint_bytes(tmp_path, tiny_vit, pattern_data, trained_run):
    again = tmp_path / "again"
    assert train.main(run_args(again, pattern_data, tiny_vit)) == 0
    assert_same_metrics(again, trained_run)
    for name in ("model.safetensors", "config.json", "preprocessor_config.json", "training_info.json"):
        assert (again / "best" / name).read_bytes() == (trained_run / "best" / name).read_bytes(), name


# ---------------------------------------------------------------------------
# Disk and inputs
# ---------------------------------------------------------------------------
def test_unwritable_or_full_output_dir_fails_before_training(tmp_path, tiny_vit, pattern_data, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert train.main(run_args(blocker / "out", pattern_data, tiny_vit)) == 2
    assert "cannot write to --output-dir" in capsys.readouterr().err
    with pytest.raises(UserError, match="MiB free"):
        check_output_dir(tmp_path / "out", needed_bytes=2**62)


@pytest.mark.parametrize("argv, message", [
    (["--epochs", "0"], "--epochs must be at least 1"),
    (["--batch-size", "0"], "--batch-size must be at least 1"),
    (["--val-split", "1.5"], "--val-split must be between 0 and 1"),
    (["--lr", "-1"], "--lr must be positive"),
    (["--freeze", "half"], "use none, backbone or a number"),
    (["--precision", "fp8"], "invalid choice"),
])
def test_bad_training_options_are_refused_up_front(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train.parse_args(argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_bad_prediction_options_are_refused_up_front(capsys):
    for argv in (["--image", "x.jpg", "--top-k", "0"], ["--image", "x.jpg", "--batch-size", "0"]):
        with pytest.raises(SystemExit):
            predict.parse_args(argv)
    assert "--top-k must be at least 1" in capsys.readouterr().err


# ---------------------------------------------------------------------------
# Loading checkpoints from elsewhere
# ---------------------------------------------------------------------------
def broken_copy(trained_run, tmp_path, change):
    target = tmp_path / "ckpt"
    shutil.copytree(trained_run / "best", target)
    change(target)
    return target


def drop_label_map(target):
    config = json.loads((target / "config.json").read_text())
    del config["id2label"], config["label2id"]
    (target / "config.json").write_text(json.dumps(config))


def five_labels(target):
    config = json.loads((target / "config.json").read_text())
    config["id2label"] = {str(i): f"class{i}" for i in range(5)}
    config["label2id"] = {f"class{i}": i for i in range(5)}
    (target / "config.json").write_text(json.dumps(config))


def pickled_weights_only(target):
    from safetensors.torch import load_file
    torch.save(load_file(target / "model.safetensors"), target / "pytorch_model.bin")
    (target / "model.safetensors").unlink()


@pytest.mark.parametrize("change, message", [
    (drop_label_map, "no label map"),
    (five_labels, "label map"),
    (pickled_weights_only, "only safetensors weights are loaded"),
])
def test_unsafe_or_inconsistent_checkpoints_are_refused(trained_run, tmp_path, change, message, capsys):
    target = broken_copy(trained_run, tmp_path, change)
    with pytest.raises(UserError, match=message):
        load_checkpoint(target)
    assert predict.main(["--model", str(target), "--image", str(tmp_path)]) == 2
    assert "Traceback" not in capsys.readouterr().err
