"""Training with several labels per image (training/multilabel.py): a tiny ViT on generated scenes, the
checkpoint that transformers.pipeline reads as multi-label, the options that are refused, the loss."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import TRAIN_OPTIONS, make_pattern_folder, read_rows, run_args, stop_after_first_epoch
from PIL import Image

import classifier
import train
from vitclassifier.config import TrainConfig
from vitclassifier.data.transforms import eval_transform
from vitclassifier.model.checkpoint import load_checkpoint
from vitclassifier.training.auto import plan_run
from vitclassifier.training.distributed import World
from vitclassifier.training.multilabel import multi_label_loss


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    """A few generated scenes, for the tests that stop before training."""
    out = tmp_path_factory.mktemp("scenes")
    assert classifier.main(["--generate-data", "--multi-label", "--out", str(out), "--per-class", "4",
                            "--classes", "circle,star,cross", "--image-size", "32"]) == 0
    return out / "labels.csv"


@pytest.mark.slow
def test_trains_and_the_pipeline_applies_the_sigmoid(multi_label_run) -> None:
    from transformers import pipeline
    scenes, out = multi_label_run
    info = json.loads((out / "best" / "training_info.json").read_text())
    assert info["select_by"] == "map" and set(info["thresholds"]) == {"circle", "cross", "star"}
    assert all(0 < t < 1 for t in info["thresholds"].values())
    config = json.loads((out / "best" / "config.json").read_text())
    assert config["problem_type"] == "multi_label_classification"
    assert all(row["val_map"] and row["val_micro_f1"] for row in read_rows(out / "metrics.csv"))
    assert {row["class"] for row in read_rows(out / "per_class.csv")} == set(info["thresholds"])
    assert (out / "pr_curves.png").stat().st_size > 1000
    image = scenes.parent / "scenes" / "scene_0001.jpg"
    scores = {r["label"]: r["score"] for r in pipeline("image-classification", model=str(out / "best"),
                                                        device="cpu")(str(image), top_k=3)}
    model, prep, labels = load_checkpoint(out / "best")
    pixels = eval_transform(prep)(Image.open(image).convert("RGB"))[None]
    with torch.no_grad():
        probs = torch.sigmoid(model(pixel_values=pixels).logits.float())[0]
    assert [scores[name] for name in labels] == pytest.approx(probs.tolist(), abs=1e-4)
    assert sum(scores.values()) != pytest.approx(1.0, abs=1e-3)  # not a softmax


@pytest.mark.slow
def test_an_interrupted_run_resumes_exactly(multi_label_run, tiny_vit: Path, tmp_path: Path,
                                            monkeypatch) -> None:
    labels_file, whole = multi_label_run
    out = tmp_path / "interrupted"
    argv = [*run_args(out, labels_file, tiny_vit), "--recipe", "fixed"]
    stop_after_first_epoch(monkeypatch, argv)
    assert train.main(["--resume", str(out)]) == 0
    rows = [read_rows(run / "metrics.csv") for run in (whole, out)]
    assert len(rows[0]) == len(rows[1]) == 2
    for a, b in zip(*rows):  # every column but the time, val_map and val_micro_f1 among them
        a.pop("seconds"), b.pop("seconds")
        assert a == b
    info = [json.loads((run / "best" / "training_info.json").read_text()) for run in (whole, out)]
    assert info[0]["thresholds"] == info[1]["thresholds"]


def test_single_label_options_are_refused(tmp_path: Path, tiny_vit: Path, scenes: Path, capsys) -> None:
    base = ["--data", str(scenes), "--model", str(tiny_vit), "--output-dir", str(tmp_path / "r"),
            *TRAIN_OPTIONS, "--recipe", "fixed"]
    assert train.main([*base, "--mixup", "0.2", "--class-weights", "auto"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--mixup, --class-weights auto: not available" in err[0]
    folder = make_pattern_folder(tmp_path / "patterns", per_class=4, size=16)
    assert train.main(["--data", str(folder), "--model", str(tiny_vit), "--output-dir", str(tmp_path / "s"),
                       *TRAIN_OPTIONS, "--recipe", "fixed", "--select-by", "map"]) == 2
    assert "--select-by map ranks several labels" in capsys.readouterr().err


def test_the_automatic_recipe_skips_with_a_reason(scenes: Path, tiny_vit: Path, capsys) -> None:
    config = TrainConfig.from_options({"data": scenes, "model": str(tiny_vit), "recipe": "auto"})
    kept, plan = plan_run(config, set(), World(), torch.device("cpu"))
    assert kept == config and "several labels per image" in plan.info["recipe"]["skipped"]
    assert "several labels per image" in capsys.readouterr().out


def test_losses_for_multi_hot_targets() -> None:
    logits = torch.tensor([[4.0, -4.0, -6.0], [-1.0, 2.0, 0.5]])
    targets = torch.tensor([[1, 0, 0], [0, 1, 1]])
    bce = multi_label_loss(logits, targets, "bce", 0.0)
    expected = F.binary_cross_entropy_with_logits(logits, targets.float(), reduction="sum") / 2
    assert bce == pytest.approx(expected.item())
    # ASL: easy negatives (probability under the 0.05 clip) add nothing; a wrong one still costs
    asl_easy = multi_label_loss(torch.tensor([[4.0, -4.0, -6.0]]), torch.tensor([[1, 0, 0]]), "asl", 0.0)
    positive_only = -F.logsigmoid(torch.tensor(4.0))
    assert asl_easy == pytest.approx(positive_only.item())
    wrong = multi_label_loss(torch.tensor([[4.0, 3.0, -6.0]]), torch.tensor([[1, 0, 0]]), "asl", 0.0)
    assert wrong > asl_easy
    smoothed = multi_label_loss(logits, targets, "bce", 0.2)  # targets 0.9 / 0.1: confident logits cost more
    assert smoothed > bce
