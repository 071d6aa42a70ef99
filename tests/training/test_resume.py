"""Never lose work (training/resume.py): stopping on a signal, and continuing an interrupted run
to exactly the numbers of the uninterrupted one; refusing to resume with other options or data."""
from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys

import pytest
import torch
from helpers import (
    assert_same_metrics,
    read_rows,
    run_args,
    stop_after_first_epoch,
    train_script_interrupted_at,
)
from PIL import Image

import train
from vitclassifier.training import trainer
from vitclassifier.training.resume import StopSignal


def test_a_second_signal_stops_at_once():
    before = signal.getsignal(signal.SIGINT)  # Python's default handler, or SIG_IGN in a background job
    with StopSignal(announce=False) as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.signum == signal.SIGTERM  # the first one only asks to stop
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before  # put back as it was


@pytest.mark.slow
def test_sigint_mid_epoch_saves_and_resume_matches_the_uninterrupted_run(tmp_path, tiny_vit, pattern_data,
                                                                           trained_run):
    out = tmp_path / "run"
    script = train_script_interrupted_at(tmp_path, epoch=2, step=5)
    process = subprocess.run([sys.executable, str(script), *run_args(out, pattern_data, tiny_vit)],
                             capture_output=True, text=True, timeout=300)
    err = process.stderr
    assert process.returncode == 130, err
    assert "Stopped in epoch 2 after step 6 of 120" in err and "--resume" in err  # the step under way ends
    state = torch.load(out / "last" / "training_state.pt", weights_only=True)
    assert (state["epoch"], state["step"]) == (2, 6)

    assert train.main(["--resume", str(out)]) == 0  # the other options come from the save
    assert_same_metrics(out, trained_run)
    best = "best/model.safetensors"
    assert (out / best).read_bytes() == (trained_run / best).read_bytes()


@pytest.mark.slow
def test_resume_continues_to_the_same_metrics(tmp_path, tiny_vit, pattern_data, trained_run, monkeypatch):
    """Ctrl-C right after epoch 1 of the 2-epoch run, then --resume: same numbers as straight through."""
    out = tmp_path / "run"
    argv = run_args(out, pattern_data, tiny_vit)
    stop_after_first_epoch(monkeypatch, argv)
    assert len(read_rows(out / "metrics.csv")) == 1
    assert train.main(argv + ["--resume"]) == 0
    resumed, straight = read_rows(out / "metrics.csv"), read_rows(trained_run / "metrics.csv")
    assert len(resumed) == 2
    for a, b in zip(resumed, straight):
        for field in ("train_loss", "train_acc", "val_loss", "val_acc", "val_top3", "lr"):
            assert float(a[field]) == pytest.approx(float(b[field]), abs=1e-6), field


@pytest.mark.slow
def test_resume_refuses_changed_options_and_changed_data(trained_run, tmp_path, pattern_data, tiny_vit,
                                                        capsys):
    assert train.main(["--resume", str(trained_run), "--lr", "0.5", "--seed", "7"]) == 2
    err = capsys.readouterr().err
    assert "--lr: was 0.001, now 0.5" in err and "--seed: was 1, now 7" in err
    interrupted = tmp_path / "interrupted"  # a copy whose last epoch is still to come
    shutil.copytree(trained_run, interrupted)
    state_path = interrupted / "last" / "training_state.pt"
    state = torch.load(state_path, weights_only=True)
    torch.save({**state, "epoch": 2, "step": 0, "finished": False}, state_path)
    extra = pattern_data / "plain" / "extra.png"
    shutil.copy(pattern_data / "plain" / "plain_000.png", extra)  # the same folder, one file more
    try:
        assert train.main(["--resume", str(interrupted)]) == 2
    finally:
        extra.unlink()
    assert "changed since that run" in capsys.readouterr().err


@pytest.mark.slow
def test_resume_refuses_other_classes(tmp_path, trained_run, capsys):
    other = tmp_path / "other"
    for name in ("a", "b"):
        (other / name).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (32, 32), (i * 40, 0, 0)).save(other / name / f"{i}.png")
    code = train.main(["--data", str(other), "--output-dir", str(trained_run), "--resume"])
    assert code == 2
    assert "cannot resume" in capsys.readouterr().err


@pytest.mark.slow
def test_resume_auto_starts_afresh_when_there_is_nothing_to_resume(tmp_path, tiny_vit, pattern_data, capsys):
    out = tmp_path / "run"
    argv = run_args(out, pattern_data, tiny_vit) + ["--epochs", "1", "--resume", "auto"]
    assert train.main(argv) == 0
    assert "starting afresh" in capsys.readouterr().out
    assert train.main(argv) == 0  # now there is a finished run: nothing left to do
    assert "already finished" in capsys.readouterr().out
    assert len(read_rows(out / "metrics.csv")) == 1


def snapshot(run) -> dict:
    """Every file of a run folder with its bytes and modification time."""
    return {path: (path.read_bytes(), path.stat().st_mtime_ns) for path in run.rglob("*") if path.is_file()}


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

