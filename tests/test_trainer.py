"""Training: it learns, the head is replaced, checkpoints reload exactly, resume repeats the run."""
from __future__ import annotations

import csv
import json

import pytest
import torch
from PIL import Image

import train
from vitclassifier.model.checkpoint import load_checkpoint
from vitclassifier.data.transforms import eval_transform
from conftest import CLASSES, TRAIN_OPTIONS


def read_rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_two_epochs_learn_well_above_chance(trained_run):
    rows = read_rows(trained_run / "metrics.csv")
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    best = max(float(r["val_acc"]) for r in rows)
    assert best >= 0.6, f"3 classes, chance is 0.33; got {best}"
    info = json.loads((trained_run / "best" / "training_info.json").read_text())
    assert info["val_acc"] == pytest.approx(best)


def test_imagenet_head_is_replaced_by_one_for_our_classes(trained_run):
    model, prep, labels = load_checkpoint(trained_run / "best")
    assert labels == sorted(CLASSES)
    assert model.classifier.out_features == 3
    assert model.config.label2id == {name: i for i, name in enumerate(sorted(CLASSES))}
    assert prep.image_size == 32 and prep.mean == (0.5, 0.5, 0.5)  # from the source model's processor


def test_best_checkpoint_reloads_with_identical_logits(trained_run, pattern_data):
    first, prep, _ = load_checkpoint(trained_run / "best")
    second, _, _ = load_checkpoint(trained_run / "best")
    image = Image.open(next((pattern_data / "horizontal").iterdir())).convert("RGB")
    batch = eval_transform(prep)(image)[None]
    with torch.inference_mode():
        assert torch.allclose(first(pixel_values=batch).logits, second(pixel_values=batch).logits, atol=1e-5)
    last, _, _ = load_checkpoint(trained_run / "last")
    assert (trained_run / "last" / "training_state.pt").is_file()
    assert last.classifier.weight.shape == first.classifier.weight.shape


def test_resume_continues_to_the_same_metrics(tmp_path, tiny_vit, pattern_data, trained_run, monkeypatch):
    """Ctrl-C right after epoch 1 of the 2-epoch run, then --resume: same numbers as straight through."""
    out = tmp_path / "run"
    argv = ["--data", str(pattern_data), "--model", str(tiny_vit), "--output-dir", str(out), *TRAIN_OPTIONS]
    write_metrics = train.write_metrics

    def write_then_interrupt(path, rows):
        write_metrics(path, rows)
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "write_metrics", write_then_interrupt)
    assert train.main(argv) == 130
    assert len(read_rows(out / "metrics.csv")) == 1
    monkeypatch.setattr(train, "write_metrics", write_metrics)
    assert train.main(argv + ["--resume"]) == 0
    resumed, straight = read_rows(out / "metrics.csv"), read_rows(trained_run / "metrics.csv")
    assert len(resumed) == 2
    for a, b in zip(resumed, straight):
        for field in ("train_loss", "train_acc", "val_loss", "val_acc", "val_top3", "lr"):
            assert float(a[field]) == pytest.approx(float(b[field]), abs=1e-6), field


def test_resume_refuses_other_classes(tmp_path, trained_run, pattern_data, capsys):
    other = tmp_path / "other"
    for name in ("a", "b"):
        (other / name).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (32, 32), (i * 40, 0, 0)).save(other / name / f"{i}.png")
    code = train.main(["--data", str(other), "--output-dir", str(trained_run), "--resume"])
    assert code == 2
    assert "cannot resume" in capsys.readouterr().err
