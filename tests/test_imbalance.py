"""Imbalanced classes: loss weights, the balanced sampler, macro-F1 and model selection by it."""
from __future__ import annotations

import json
from collections import Counter

import pytest
import torch
from helpers import TRAIN_OPTIONS, make_pattern_folder, read_rows

import train
from vitclassifier.reporting.metrics import macro_f1, per_class_scores
from vitclassifier.training.distributed import EpochSampler, ShardSampler, World
from vitclassifier.training.recipe import class_weights


def test_class_weights_give_every_class_the_same_total_weight():
    labels = [0] * 10 + [1] * 2
    weights = class_weights(labels, 2)
    assert weights.tolist() == pytest.approx([0.6, 3.0])
    assert 10 * weights[0] == pytest.approx(2 * weights[1])


def test_macro_f1_from_a_confusion_matrix():
    confusion = torch.tensor([[3, 1, 0], [0, 2, 0], [0, 0, 0]])  # rows: true class; class 2 never occurs
    scores = per_class_scores(confusion)
    assert scores["precision"][:2].tolist() == pytest.approx([1.0, 2 / 3])
    assert scores["recall"][:2].tolist() == pytest.approx([0.75, 1.0])
    assert macro_f1(confusion) == pytest.approx((6 / 7 + 0.8) / 2)  # absent classes don't count


def test_balanced_sampler_draws_classes_equally_and_repeatably():
    labels = torch.tensor([0] * 900 + [1] * 100)
    weights = class_weights(labels.tolist(), 2)[labels].double()
    sampler = EpochSampler(len(labels), batch_size=10, seed=3, world=World(), weights=weights)
    sampler.set_epoch(1)
    first = list(sampler)
    counts = Counter(labels[first].tolist())
    assert abs(counts[0] - counts[1]) < 100  # about 500 each instead of 900 / 100
    assert first == list(sampler)  # same (seed, epoch), same draw
    sampler.set_epoch(2)
    assert first != list(sampler)


def test_sampler_shards_cover_the_epoch_once_and_resume_skips_whole_batches():
    plain = EpochSampler(50, batch_size=4, seed=0, world=World())
    plain.set_epoch(1)
    order = list(plain)
    assert sorted(order) == list(range(50)) and plain.steps == 13  # every image; the last batch holds 2
    shards = [EpochSampler(50, batch_size=2, seed=0, world=World(rank, 2)) for rank in (0, 1)]
    for shard in shards:
        shard.set_epoch(1)
    assert sorted(list(shards[0]) + list(shards[1])) == sorted(order)
    plain.set_epoch(1, start_batch=3)
    assert list(plain) == order[12:] and len(plain) == 38
    uneven = [EpochSampler(51, batch_size=4, seed=0, world=World(rank, 2)) for rank in (0, 1)]
    for shard in uneven:
        shard.set_epoch(1)
    first, second = list(uneven[0]), list(uneven[1])
    assert len(first) == len(second) == 26 and uneven[0].steps == uneven[1].steps == 7  # equal steps
    assert set(first + second) == set(range(51))  # every image; one of them twice, to even out the shares
    validation = [list(ShardSampler(7, World(rank, 2))) for rank in (0, 1)]
    assert sorted(validation[0] + validation[1]) == list(range(7))


@pytest.mark.slow
def test_imbalanced_training_with_weights_sampler_and_macro_f1_selection(tmp_path, tiny_vit):
    data = make_pattern_folder(tmp_path / "data", per_class=60)
    for extra in sorted((data / "plain").iterdir())[12:]:  # plain: 12 images, the others 60
        extra.unlink()
    out = tmp_path / "run"
    assert train.main(["--data", str(data), "--model", str(tiny_vit), "--output-dir", str(out),
                       *TRAIN_OPTIONS, "--epochs", "3", "--class-weights", "auto", "--balanced-sampler",
                       "--select-by", "macro-f1"]) == 0
    rows = read_rows(out / "metrics.csv")
    info = json.loads((out / "best" / "training_info.json").read_text())
    best_row = max(rows, key=lambda r: (float(r["val_macro_f1"]), -float(r["val_loss"])))
    assert info["select_by"] == "macro-f1" and info["epoch"] == int(best_row["epoch"])
    assert info["val_macro_f1"] == pytest.approx(float(best_row["val_macro_f1"]), abs=1e-6)
