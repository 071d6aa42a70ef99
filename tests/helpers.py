"""What several test modules share: paths, the tiny training options, the pattern images, a tiny ViT
saved like a Hub checkpoint, readers of what a run writes, and the checks of one-line errors and
of what a failed write leaves. Plain functions and constants; the
fixtures built from them are in conftest.py. Test modules import from here, never from each other."""
from __future__ import annotations

import csv
import errno
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]  # the repository: the commands and the vitclassifier package

CLASSES = ["horizontal", "plain", "vertical"]
# --recipe fixed: the automatic recipe's measurements are tested in tests/training/test_auto*
TRAIN_OPTIONS = ["--epochs", "2", "--batch-size", "8", "--lr", "1e-3", "--num-workers", "0",
                 "--warmup", "0.05", "--no-rotate", "--no-color-jitter", "--no-crop", "--seed", "1",
                 "--precision", "fp32", "--recipe", "fixed"]
# the metrics.csv columns two runs that should be the same run must agree on
COMPARED = ("train_loss", "train_acc", "val_loss", "val_acc", "val_top3", "val_macro_f1", "lr")


def make_pattern_folder(root: Path, per_class: int, size: int = 40) -> Path:
    """Three classes a tiny ViT can learn in two short epochs: horizontal bars, vertical bars,
    plain. Colours and bar widths are random in every class, so colour alone tells nothing."""
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(0)
    for name in CLASSES:
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            a, b = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
            period = int(rng.integers(4, 10))
            bars = (np.arange(size) // (period // 2)) % 2 == 0
            mask = np.zeros((size, size), bool) if name == "plain" else np.tile(bars[:, None], (1, size))
            mask = mask.T if name == "vertical" else mask
            pixels = np.where(mask[..., None], a, b) + rng.normal(0, 8, (size, size, 3))
            image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
            image.save(root / name / f"{name}_{i:03d}.png")
    return root


def save_tiny_vit(directory: Path, num_labels: int = 1000, image_size: int = 32,
                  labels: list[str] | None = None) -> Path:
    """A tiny ViT with an ImageNet-sized head (or one class per name of ``labels``), saved the way a
    Hub checkpoint is."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor
    torch.manual_seed(0)
    labels = labels or [f"imagenet_class_{i}" for i in range(num_labels)]
    config = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                       image_size=image_size, patch_size=8, num_labels=len(labels),
                       id2label=dict(enumerate(labels)), label2id={name: i for i, name in enumerate(labels)})
    ViTForImageClassification(config).save_pretrained(directory)
    ViTImageProcessor(size={"height": image_size, "width": image_size},
                      image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(directory)
    return directory


def run_args(out: Path, data: Path, model: Path) -> list[str]:
    """train.py's command line for the tiny 2-epoch run of ``model`` on ``data`` into ``out``."""
    return ["--data", str(data), "--model", str(model), "--output-dir", str(out), *TRAIN_OPTIONS]


def read_rows(path: Path) -> list[dict]:
    """The rows of a CSV file a run wrote (metrics.csv, per_class.csv), as dicts of text."""
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def assert_same_metrics(a_dir: Path, b_dir: Path) -> None:
    """The two runs' metrics.csv agree epoch by epoch on every COMPARED column (to 1e-6)."""
    a_rows, b_rows = read_rows(a_dir / "metrics.csv"), read_rows(b_dir / "metrics.csv")
    assert [r["epoch"] for r in a_rows] == [r["epoch"] for r in b_rows]
    for a, b in zip(a_rows, b_rows):
        for name in COMPARED:
            assert float(a[name]) == pytest.approx(float(b[name]), abs=1e-6), (a["epoch"], name)


CHROMIUM = Path("/usr/bin/chromium")
STARTUP_SECONDS = 180  # importing gradio, torch and transformers is slow on a busy 2-core machine


def free_port() -> int:
    import socket
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_app(arguments: list[str], log: Path) -> tuple[subprocess.Popen, str]:
    """`python app.py ARGUMENTS` on a free loopback port, its output into ``log``, once it answers:
    (process, URL); the caller stops it."""
    url = f"http://127.0.0.1:{(port := free_port())}/"
    with open(log, "w") as output:
        process = subprocess.Popen([sys.executable, str(ROOT / "app.py"), *arguments, "--port", str(port)],
                                   stdout=output, stderr=subprocess.STDOUT,
                                   env={**os.environ, "HF_HUB_OFFLINE": "1"})
    deadline = time.monotonic() + STARTUP_SECONDS
    try:
        while True:
            assert process.poll() is None, f"app.py exited early:\n{log.read_text()}"
            try:
                urllib.request.urlopen(url, timeout=2)
                return process, url
            except OSError:
                assert time.monotonic() < deadline, (f"app.py did not answer in {STARTUP_SECONDS}s:\n"
                                                     f"{log.read_text()}")
                time.sleep(0.5)
    except AssertionError:
        process.kill()  # never left behind
        raise


def write_small_images(folder: Path, count: int = 2) -> Path:
    """``count`` 40-px PNGs of different colours in ``folder``."""
    from PIL import Image
    for i in range(count):
        Image.new("RGB", (40, 40), (100 * i, 60, 200)).save(folder / f"{i}.png")
    return folder


def one_line_refusal(code: int, err: str, *fragments: str) -> None:
    """Exit 2 and exactly one ``error: cannot load ...`` line, holding every one of ``fragments``."""
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith("error: cannot load "), err
    for fragment in fragments:
        assert fragment in lines[0], err


def confidences(model_dir: Path, image: Path, tmp_path: Path) -> dict[str, float]:
    """predict.py's confidence for every class of ``image`` (top-k 3, fp32), read from its JSON."""
    import json

    import predict
    out = tmp_path / f"answers-of-{model_dir.name}.json"  # not MODEL.json: an export's own sidecar
    assert predict.main(["--model", str(model_dir), "--image", str(image), "--json", str(out),
                         "--precision", "fp32", "--top-k", "3"]) == 0
    result = json.loads(out.read_text())["results"][0]
    return {p["label"]: p["confidence"] for p in result["predictions"]}


def leftovers(folder: Path) -> list[str]:
    """Temporary files or folders a write left behind in ``folder``."""
    return sorted(p.name for p in folder.rglob("*") if ".tmp" in p.name or ".probe" in p.name)


def one_error_line(err: str, *needles: str) -> str:
    """The one ``error: ...`` line of ``err``, holding every one of ``needles``."""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def full_disk_error(*_args, **_kwargs):
    """A stand-in for a write that meets a full disk."""
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def fill(disk: Path, leave: int) -> None:
    """Fill ``disk`` up to ``leave`` bytes free."""
    free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
    (disk / "filler").write_bytes(b"\0" * max(0, free - leave))


def must_not_load(*_args, **_kwargs):
    """A stand-in for a model loader, for checks that must come before any loading."""
    raise AssertionError("the model was loaded before the outputs were checked")


def count_decodes(monkeypatch) -> list:
    """A list that gets every picture Pillow decodes from now on (ImageFile.load), so that a test can
    say "refused before a pixel was decoded" without timing it."""
    from PIL import ImageFile
    decoded, load = [], ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda image: (decoded.append(image), load(image))[1])
    return decoded


def train_script_interrupted_at(folder: Path, epoch: int, step: int) -> Path:
    """A train.py that gets a real SIGINT at a known step: in the process (rank 0 under torchrun) it
    runs in, when step ``step`` of ``epoch`` begins. A timed kill from outside raced the run."""
    script = folder / "train_interrupted.py"
    script.write_text(
        f"import os, signal, sys\nsys.path.insert(0, {str(ROOT)!r})\n"
        "import train\nfrom vitclassifier.training.trainer import Trainer\n"
        "forward_backward = Trainer.forward_backward\n\n"
        "def interrupted(self, *args):\n"
        f"    if (self.state.epoch, self.state.step) == ({epoch}, {step}) and self.world.rank == 0:\n"
        "        os.kill(os.getpid(), signal.SIGINT)\n"
        "    return forward_backward(self, *args)\n\n"
        "Trainer.forward_backward = interrupted\nsys.exit(train.main(sys.argv[1:]))\n")
    return script


def stop_after_first_epoch(monkeypatch, argv: list[str]) -> None:
    """Run train.py with ``argv`` and press Ctrl-C right after its first epoch is saved (exit 130)."""
    import train
    from vitclassifier.training import trainer
    write_metrics = trainer.write_metrics

    def write_then_interrupt(path, rows):
        write_metrics(path, rows)
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "write_metrics", write_then_interrupt)
    assert train.main(argv) == 130
    monkeypatch.setattr(trainer, "write_metrics", write_metrics)


# The credentials of the local S3-compatible server (moto): distinctive, so that a test can look for them
S3_KEY, S3_SECRET = "AKIAVITTESTKEY0001", "vit-test-secret-never-shown"


def s3_environment(server) -> dict[str, str]:
    """What a user sets to reach the S3 server (a moto ThreadedMotoServer): endpoint and credentials."""
    host, port = server.get_host_and_port()
    return {"AWS_ACCESS_KEY_ID": S3_KEY, "AWS_SECRET_ACCESS_KEY": S3_SECRET,
            "AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_DEFAULT_REGION": "us-east-1"}


def upload(folder: Path, url: str) -> None:
    """Every file of ``folder`` into the store at ``url`` (a bucket's folder), as a user would."""
    import fsspec
    fs, path = fsspec.core.url_to_fs(url)
    fs.put(f"{folder}/", f"{path}/", recursive=True)
