"""Training over tar shards in an object store (a real local S3-compatible server, the ``s3`` fixture):
one process over s3:// is the run over the same shards on disk, with no credential in what it writes;
and torchrun with 2 nodes on this machine (c10d rendezvous, one process each, gloo) over the same
s3:// shards matches one process with the same global batch."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
from helpers import (
    ROOT,
    S3_KEY,
    S3_SECRET,
    assert_same_metrics,
    free_port,
    make_pattern_folder,
    read_rows,
    s3_environment,
    upload,
)

pytestmark = [
    pytest.mark.skipif(sys.platform == "win32", reason="torchrun's gloo on Windows is not supported"),
    pytest.mark.slow,  # trains; torchrun: two nodes of one process each
]
PATTERN = "train-{000000..000003}.tar"


@pytest.fixture(scope="module")
def local_shards(tmp_path_factory):
    """30 pattern images: 4 training shards of 6 (two per node) and a validation shard."""
    import classifier
    root = tmp_path_factory.mktemp("multi-node")
    make_pattern_folder(root / "images", per_class=10, size=32)
    shards = root / "shards"
    assert classifier.main(["--to-shards", str(root / "images"), str(shards), "--shard-size", "6"]) == 0
    return shards


def options(data: str, model, out, batch: int) -> list[str]:
    """One epoch at a learning rate too small to move the weights: the losses then measure the data
    each run saw, whatever order the processes read it in (one process, or two with half the batch)."""
    return ["--data", data, "--model", str(model), "--output-dir", str(out), "--epochs", "1",
            "--batch-size", str(batch), "--lr", "1e-9", "--head-lr", "1e-9", "--warmup", "0",
            "--dropout", "0", "--no-flip", "--no-rotate", "--no-color-jitter", "--no-crop", "--num-workers",
            "0", "--seed", "1", "--precision", "fp32", "--recipe", "fixed"]


@pytest.fixture(scope="module")
def one_process_runs(tmp_path_factory, local_shards, tiny_vit, s3_server):
    """The same shards trained on from disk and from the S3 server, one process each: their folders and
    what the S3 run printed."""
    import s3fs

    import train
    root = tmp_path_factory.mktemp("one-process")
    with pytest.MonkeyPatch.context() as env:
        for name, value in s3_environment(s3_server).items():
            env.setenv(name, value)
        s3fs.S3FileSystem.clear_instance_cache()
        upload(local_shards, "s3://multi-node/shards")
        assert train.main(options(f"{local_shards}/{PATTERN}", tiny_vit, root / "disk", 8)) == 0
        assert train.main(options(f"s3://multi-node/shards/{PATTERN}", tiny_vit, root / "s3", 8)) == 0
    return root / "disk", root / "s3"


def test_one_process_over_s3_is_the_run_over_the_shards_on_disk(one_process_runs, capfd):
    disk, remote = one_process_runs
    assert_same_metrics(disk, remote)
    info = json.loads((remote / "best" / "training_info.json").read_text())
    assert info["data"] == {"form": "shards", "data": f"s3://multi-node/shards/{PATTERN}"}
    written = [p for p in remote.rglob("*") if p.is_file()]
    assert any(p.name == "README.md" for p in written) and any(p.name == "training_state.pt" for p in written)
    for path in written:  # the model card, training_info.json, the saved options, the tables
        data = path.read_bytes()
        assert S3_SECRET.encode() not in data and S3_KEY.encode() not in data, path


def two_nodes(data: str, model, out) -> list[subprocess.CompletedProcess]:
    """torchrun twice on this machine, as on two nodes: c10d rendezvous, one process each, half the batch."""
    port, done = free_port(), []
    processes = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node-rank", str(rank),
         "--nproc-per-node", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}",
         "--rdzv-id", "multi-node-test", "--max-restarts", "0", str(ROOT / "train.py"),
         *options(data, model, out, 4)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"}) for rank in (0, 1)]
    try:
        for process in processes:
            stdout, stderr = process.communicate(timeout=300)
            done.append(subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr))
    finally:
        for process in processes:  # a hang never leaves workers behind
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
    return done


def test_two_nodes_over_s3_learn_like_one_process_with_the_same_global_batch(one_process_runs, s3, tiny_vit,
                                                                             tmp_path):
    out = tmp_path / "two-nodes"
    nodes = two_nodes(f"s3://multi-node/shards/{PATTERN}", tiny_vit, out)
    for node in nodes:
        assert node.returncode == 0, node.stderr[-3000:]
        assert S3_SECRET not in node.stdout + node.stderr and S3_KEY not in node.stdout + node.stderr
    said = "".join(node.stdout for node in nodes)
    assert said.count("epoch 1/1:") == 1 and "2 processes, global batch 8" in said
    one = one_process_runs[1]
    infos = [json.loads((run / "best" / "training_info.json").read_text()) for run in (out, one)]
    for name in ("train_images", "val_images"):  # every image once, none padded or lost
        assert infos[0][name] == infos[1][name]
    a, b = read_rows(out / "metrics.csv")[0], read_rows(one / "metrics.csv")[0]
    for name in ("train_loss", "val_loss", "val_acc"):  # the same images; sums in another order
        assert float(a[name]) == pytest.approx(float(b[name]), abs=1e-4), name
