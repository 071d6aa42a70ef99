"""Shared fixtures: a tiny ViT saved like a Hub checkpoint, a small generated data set, a trained run.

Everything is built here, offline: no weights or data are downloaded, nothing is mocked.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never wait on the network in tests
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

CLASSES = ["horizontal", "plain", "vertical"]
TRAIN_OPTIONS = ["--epochs", "2", "--batch-size", "8", "--lr", "1e-3", "--num-workers", "0",
                 "--warmup", "0.05", "--no-rotate", "--no-color-jitter", "--no-crop", "--seed", "1", "--precision", "fp32"]


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
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(root / name / f"{name}_{i:03d}.png")
    return root


def save_tiny_vit(directory: Path, num_labels: int = 1000, image_size: int = 32) -> Path:
    """A tiny ViT with an ImageNet-sized head, saved the way a Hub checkpoint is."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor
    import torch
    torch.manual_seed(0)
    config = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                       image_size=image_size, patch_size=8, num_labels=num_labels,
                       id2label={i: f"imagenet_class_{i}" for i in range(num_labels)},
                       label2id={f"imagenet_class_{i}": i for i in range(num_labels)})
    ViTForImageClassification(config).save_pretrained(directory)
    ViTImageProcessor(size={"height": image_size, "width": image_size},
                      image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_vit(tmp_path_factory) -> Path:
    return save_tiny_vit(tmp_path_factory.mktemp("tiny-vit"))


@pytest.fixture(scope="session")
def pattern_data(tmp_path_factory) -> Path:
    return make_pattern_folder(tmp_path_factory.mktemp("patterns") / "data", per_class=400)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, tiny_vit, pattern_data) -> Path:
    """A 2-epoch fine-tuning of the tiny 1000-class ViT to our 3 classes; returns its output dir."""
    import train
    out = tmp_path_factory.mktemp("run") / "checkpoints"
    assert train.main(["--data", str(pattern_data), "--model", str(tiny_vit), "--output-dir", str(out),
                       *TRAIN_OPTIONS]) == 0
    return out


@pytest.fixture(scope="session")
def openvino_int8_export(trained_run, pattern_data, tmp_path_factory) -> tuple[Path, str]:
    """The trained checkpoint exported by export.py as int8 OpenVINO, calibrated on the pattern
    images; returns (the .xml path, export.py's report)."""
    for package in ("openvino", "nncf"):
        pytest.importorskip(package, reason="needs the extras: pip install -r requirements-extras.txt")
    import contextlib
    import io

    import export
    out, report = tmp_path_factory.mktemp("openvino") / "model.xml", io.StringIO()
    with contextlib.redirect_stdout(report):
        code = export.main(["--model", str(trained_run / "best"), "--format", "openvino-int8", "--out", str(out),
                            "--calibration-images", str(pattern_data), "--bench-rounds", "1"])
    assert code == 0, report.getvalue()
    return out, report.getvalue()

