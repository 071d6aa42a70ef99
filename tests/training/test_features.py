"""Cached backbone features (training/features.py): the head trained on them trains like the full forward
pass, and features are cached only when every epoch would see the same."""
from __future__ import annotations

import pytest
import torch
from helpers import TRAIN_OPTIONS, read_rows

import train
from vitclassifier.model.checkpoint import load_checkpoint
from vitclassifier.training.features import can_cache_features


@pytest.mark.slow
def test_head_on_cached_features_trains_like_the_full_forward_pass(pattern_data, tiny_vit, tmp_path, capsys):
    """--freeze backbone without augmentation: the cached-features path gives the metrics of the
    path that runs the backbone every epoch (--cache-mb 0 turns every cache off)."""
    options = ["--data", str(pattern_data), "--model", str(tiny_vit), *TRAIN_OPTIONS, "--freeze", "backbone",
               "--no-flip", "--no-calibrate"]
    assert train.main(options + ["--output-dir", str(tmp_path / "cached")]) == 0
    assert "computed its features once" in capsys.readouterr().out
    assert train.main(options + ["--output-dir", str(tmp_path / "full"), "--cache-mb", "0"]) == 0
    assert "computed its features once" not in capsys.readouterr().out
    cached = read_rows(tmp_path / "cached" / "metrics.csv")
    full = read_rows(tmp_path / "full" / "metrics.csv")
    tolerance = 1e-2 if torch.cuda.is_available() else 1e-5  # GPUs: TF32 matmuls round by batch make-up
    for a, b in zip(cached, full, strict=True):
        for column in ("train_loss", "train_acc", "val_loss", "val_acc"):
            assert float(a[column]) == pytest.approx(float(b[column]), abs=tolerance), column
    head_a = load_checkpoint(tmp_path / "cached" / "best")[0].classifier.weight
    head_b = load_checkpoint(tmp_path / "full" / "best")[0].classifier.weight
    assert torch.allclose(head_a, head_b, atol=tolerance)


def test_features_are_cached_only_when_every_epoch_would_see_the_same():
    _, config, _ = train.parse_args(["--freeze", "backbone", "--no-crop", "--no-flip", "--no-rotate",
                                     "--no-color-jitter"])
    assert can_cache_features(config)
    for change in ({"freeze": "none"}, {"freeze": "2"}, {"no_flip": False}, {"mixup": 0.2},
                   {"backbone_dropout": 0.1}, {"cache_mb": 0}):
        assert not can_cache_features(config.replace(**change)), change

