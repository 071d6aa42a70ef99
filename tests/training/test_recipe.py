"""The fine-tuning recipe (training/recipe.py, through train.py): every knob changes what it should, and
only that."""
from __future__ import annotations

import json

import pytest
import torch
from helpers import TRAIN_OPTIONS, make_pattern_folder, read_rows
from safetensors.torch import load_file

import train
from vitclassifier.data.folders import load_splits
from vitclassifier.data.transforms import eval_transform
from vitclassifier.model.checkpoint import load_checkpoint
from vitclassifier.model.vit import create_model
from vitclassifier.training import setup as training_setup
from vitclassifier.training.recipe import (
    EMA,
    class_weights,
    make_optimizer,
    mix_batches,
    parameter_depths,
    staged_warmup_cosine,
)


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    return make_pattern_folder(tmp_path_factory.mktemp("small") / "data", per_class=40)


def run(tmp_path, data, model, *extra, name="run"):
    out = tmp_path / name
    assert train.main(["--data", str(data), "--model", str(model), "--output-dir", str(out),
                       *TRAIN_OPTIONS, *extra]) == 0
    return out


def backbone(weights: dict) -> dict:
    return {k: v for k, v in weights.items() if not k.startswith("classifier")}


@pytest.mark.slow
def test_freeze_epochs_train_the_head_alone_then_everything(tmp_path, small_data, tiny_vit):
    source = backbone(load_file(tiny_vit / "model.safetensors"))
    head_only = load_file(run(tmp_path, small_data, tiny_vit, "--epochs", "1", "--freeze-epochs", "1",
                              name="head") / "last" / "model.safetensors")
    assert all(torch.equal(head_only[k], v) for k, v in source.items())  # the backbone did not move
    both = load_file(run(tmp_path, small_data, tiny_vit, "--epochs", "2", "--freeze-epochs", "1",
                         name="both") / "last" / "model.safetensors")
    assert not all(torch.equal(both[k], v) for k, v in source.items())  # epoch 2 trained the backbone


def test_layer_decay_orders_learning_rates_by_depth_and_the_head_has_its_own(tiny_vit):
    model, _ = create_model(str(tiny_vit), ["a", "b"], pretrained=True, dropout=0.0)
    optimizer = make_optimizer(model, lr=1e-3, weight_decay=0.05, layer_decay=0.5, head_lr=5e-2)
    lr_of = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    depths = parameter_depths(model)
    by_depth = {}
    for name, param in model.named_parameters():
        if not name.startswith("classifier"):
            by_depth.setdefault(depths[name], set()).add(lr_of[id(param)])
    assert all(len(lrs) == 1 for lrs in by_depth.values())
    ordered = [by_depth[d].pop() for d in sorted(by_depth)]  # embeddings, block 1, block 2, final norm
    assert ordered == pytest.approx([1e-3 * 0.5 ** 3, 1e-3 * 0.5 ** 2, 1e-3 * 0.5, 1e-3])
    assert lr_of[id(model.classifier.weight)] == 5e-2
    no_decay = [g for g in optimizer.param_groups if g["weight_decay"] == 0]
    assert all(p.ndim == 1 for g in no_decay for p in g["params"])


def test_each_stage_has_its_own_warmup_and_cosine():
    factor = staged_warmup_cosine([10, 30], warmup=0.2)
    cosine = round(0.5 * (1 + torch.cos(torch.tensor(7 / 8 * torch.pi))).item(), 3)
    assert [round(factor(s), 3) for s in (0, 1, 9)] == [0.5, 1.0, cosine]
    assert factor(10) == pytest.approx(1 / 6)  # stage 2 warms up again over 6 steps
    assert factor(15) == pytest.approx(1.0) and factor(39) < 0.01


@pytest.mark.slow
def test_grad_accumulation_matches_the_big_batch(tmp_path, small_data, tiny_vit):
    options = ["--epochs", "1", "--dropout", "0", "--label-smoothing", "0"]
    accumulated = read_rows(run(tmp_path, small_data, tiny_vit, *options, "--batch-size", "4",
                                "--grad-accum", "4", name="accum") / "metrics.csv")
    big = read_rows(run(tmp_path, small_data, tiny_vit, *options, "--batch-size", "16",
                        name="big") / "metrics.csv")
    for name in ("train_loss", "train_acc", "val_loss", "val_acc"):
        assert float(accumulated[0][name]) == pytest.approx(float(big[0][name]), abs=1e-4), name


@pytest.mark.slow
def test_gradient_checkpointing_is_on_and_gives_the_same_training(tmp_path, small_data, tiny_vit,
                                                                  monkeypatch):
    options = ["--epochs", "1", "--dropout", "0"]
    plain = read_rows(run(tmp_path, small_data, tiny_vit, *options, name="plain") / "metrics.csv")
    built = []
    monkeypatch.setattr(training_setup, "create_model",
                        lambda *a, **k: built.append(create_model(*a, **k)) or built[-1])
    checkpointed = read_rows(run(tmp_path, small_data, tiny_vit, *options, "--grad-checkpointing",
                                 name="ckpt") / "metrics.csv")
    assert getattr(built[0][0], "is_activation_checkpointing", None) or built[0][0].is_gradient_checkpointing
    assert float(plain[0]["val_loss"]) == pytest.approx(float(checkpointed[0]["val_loss"]), abs=1e-5)


def test_mixup_and_cutmix_give_soft_targets_that_sum_to_one():
    torch.manual_seed(0)
    images, labels = torch.rand(8, 3, 16, 16), torch.arange(8) % 3
    for mix in (mix_batches(3, 0.4, 0.0), mix_batches(3, 0.0, 1.0), mix_batches(3, 0.4, 1.0)):
        mixed, targets = mix(images, labels)
        assert targets.shape == (8, 3) and torch.allclose(targets.sum(1), torch.ones(8))
        assert not torch.equal(mixed, images)
    assert mix_batches(3, 0.0, 0.0) is None


@pytest.mark.slow
def test_mixup_training_counts_accuracy_on_the_true_labels_and_backbone_dropout_is_set(tmp_path, small_data,
                                                                                       tiny_vit):
    out = run(tmp_path, small_data, tiny_vit, "--epochs", "2", "--mixup", "0.4", "--cutmix", "1.0",
              "--backbone-dropout", "0.2")
    assert json.loads((out / "best" / "config.json").read_text())["hidden_dropout_prob"] == 0.2
    rows = read_rows(out / "metrics.csv")
    # 96 training images: hits on hard labels make a whole number, soft-target credit would not
    for row in rows:
        hits = float(row["train_acc"]) * 96
        assert hits == pytest.approx(round(hits), abs=1e-3) and 0 <= hits <= 96
        assert float(row["val_acc"]) * 24 == pytest.approx(round(float(row["val_acc"]) * 24), abs=1e-3)


def test_ema_follows_the_weights_slowly():
    model = torch.nn.Linear(2, 2)
    ema = EMA(model, decay=0.9)
    start = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model)  # first update: decay min(0.9, 2/11)
    expected = start + (1 - 2 / 11) * 1.0
    assert torch.allclose(ema.model.weight, expected)
    assert not torch.equal(ema.model.weight, model.weight)


@pytest.mark.slow
def test_ema_is_validated_and_the_better_weights_are_saved(tmp_path, small_data, tiny_vit):
    out = run(tmp_path, small_data, tiny_vit, "--epochs", "3", "--ema", "0.9")
    rows = read_rows(out / "metrics.csv")
    assert all(row["ema_val_acc"] for row in rows)
    info = json.loads((out / "best" / "training_info.json").read_text())
    row = rows[info["epoch"] - 1]
    raw = (float(row["val_acc"]), -float(row["val_loss"]))
    ema = (float(row["ema_val_acc"]), -float(row["ema_val_loss"]))
    assert info["weights"] == ("ema" if ema > raw else "raw")
    # The saved model is the chosen one: scoring it again gives the recorded validation accuracy.
    model, prep, labels = load_checkpoint(out / "best")
    _, _, val = load_splits(small_data, 0.2, 1)
    from PIL import Image
    batch = torch.stack([eval_transform(prep)(Image.open(p).convert("RGB")) for p, _ in val])
    with torch.inference_mode():
        predicted = model(pixel_values=batch).logits.argmax(1)
    accuracy = (predicted == torch.tensor([label for _, label in val])).double().mean().item()
    assert accuracy == pytest.approx(info["val_acc"], abs=1e-6)


def test_class_weights_give_every_class_the_same_total_weight():
    labels = [0] * 10 + [1] * 2
    weights = class_weights(labels, 2)
    assert weights.tolist() == pytest.approx([0.6, 3.0])
    assert 10 * weights[0] == pytest.approx(2 * weights[1])

