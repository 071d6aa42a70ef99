"""torchrun with two CPU processes (gloo): one checkpoint, exact validation counts, same learning
as one process with the same global batch, and stop + resume under torchrun."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT, assert_same_metrics, read_rows, run_args, train_script_interrupted_at

from vitclassifier.data.folders import load_splits
from vitclassifier.training.output import LOCK, MARKER  # how a run claims and locks its output folder

pytestmark = [
    pytest.mark.skipif(sys.platform == "win32", reason="torchrun's gloo on Windows is not supported"),
    pytest.mark.slow,  # torchrun: two training processes per run
]


def torchrun(out, data, model, *extra, script: Path = ROOT / "train.py") -> list[str]:
    """The command line of a 2-process run with half the single-process batch (the same global batch)."""
    options = run_args(out, data, model) + ["--batch-size", "4", "--dropout", "0"]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
            str(script), *options, *extra]


def run_to_the_end(command: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    """Run torchrun in a process group of its own, so that a hang never leaves workers behind."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        raise
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory, tiny_vit, pattern_data):
    out = tmp_path_factory.mktemp("ddp") / "checkpoints"
    result = run_to_the_end(torchrun(out, pattern_data, tiny_vit))
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result.stdout


def test_two_processes_write_one_checkpoint_and_validate_on_the_whole_set(ddp_run, pattern_data):
    out, stdout = ddp_run
    assert sorted(p.name for p in out.iterdir()) == sorted([  # one of each, written once: no copy, no .tmp
        MARKER, LOCK, "best", "confusion_matrix.csv", "confusion_matrix.png", "curves.png", "last",
        "metrics.csv", "mistakes.png", "per_class.csv"])
    assert stdout.count("epoch 1/2:") == 1  # only the main process prints
    assert "2 processes, global batch 8" in stdout
    _, train_samples, val_samples = load_splits(pattern_data, 0.2, 1)
    info = json.loads((out / "best" / "training_info.json").read_text())
    assert info["val_images"] == len(val_samples)  # summed over both shards, nothing padded or lost
    assert info["train_images"] == len(train_samples)  # every image, the last global batch a smaller one


def test_two_processes_learn_like_one_with_the_same_global_batch(ddp_run, tmp_path, tiny_vit, pattern_data):
    """Two processes of 4 see the same global batches of 8, in the same order, as one process of 8;
    without dropout (whose masks differ per process) the runs agree up to float summation order."""
    import train
    one = tmp_path / "one"
    assert train.main(run_args(one, pattern_data, tiny_vit) + ["--batch-size", "8", "--dropout", "0"]) == 0
    for a, b in zip(read_rows(ddp_run[0] / "metrics.csv"), read_rows(one / "metrics.csv")):
        for name in ("train_loss", "val_loss", "val_acc"):
            assert float(a[name]) == pytest.approx(float(b[name]), abs=1e-3), name
    assert float(a["val_acc"]) >= 0.6


def test_stop_and_resume_under_torchrun_repeat_the_run(ddp_run, tmp_path, tiny_vit, pattern_data):
    out = tmp_path / "run"  # rank 0 alone gets the signal: both processes stop at the same step
    script = train_script_interrupted_at(tmp_path, epoch=2, step=5)
    stopped = run_to_the_end(torchrun(out, pattern_data, tiny_vit, script=script), timeout=200)
    stdout, stderr = stopped.stdout, stopped.stderr
    assert "Stopped in epoch 2" in stdout + stderr, stderr[-3000:]
    resumed = run_to_the_end([sys.executable, "-m", "torch.distributed.run", "--standalone",
                              "--nproc_per_node=2", str(ROOT / "train.py"), "--resume", str(out)])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_metrics(out, ddp_run[0])
