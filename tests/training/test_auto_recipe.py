"""The automatic recipe's decisions (training/auto_recipe.py): typed options always win, fewer images
never get fewer epochs, the time cap holds, and the decisions survive a JSON round trip."""
from __future__ import annotations

import dataclasses
import json

import pytest

from vitclassifier.config import TrainConfig
from vitclassifier.training.auto_recipe import RULES, SCRATCH_TIME_CAP, TIME_CAP, Facts, decide, from_json

FIXED = TrainConfig().with_default_lrs().as_options()  # the fixed recipe: every default, LRs resolved
FACTS = Facts(train_images=250, images_per_class_min=50, images_per_class_median=50, num_classes=5,
              image_size_median=224, pretrained=True, model_name="vit-base", batch_size=32,
              lr_suggestion=2e-4, probe_accuracy=0.55, flip_switch_off=True,
              flip_reason="flip switched off: validation accuracy 90% as the images are, 20% with flip",
              measurement_epochs=2.5)
TYPED = {"lr": 1e-4, "head_lr": 3e-3, "epochs": 4, "patience": 2, "freeze_epochs": 1, "warmup": 0.3,
         "no_flip": True, "label_smoothing": 0.0}


def decided(facts: Facts = FACTS, typed: dict | None = None) -> dict:
    decisions = decide(facts, {**FIXED, **(typed or {})}, set(typed or ()))
    return {d.option: d for d in decisions}


def test_every_typed_option_overrides_its_automatic_choice() -> None:
    assert set(TYPED) == set(RULES)  # a value to type for every option the recipe decides
    automatic = decided(dataclasses.replace(FACTS, flip_switch_off=False))
    for option, value in TYPED.items():
        assert automatic[option].value != value, option  # else the test could not fail
        kept = decided(dataclasses.replace(FACTS, flip_switch_off=False), {option: value})[option]
        assert kept.value == value and "as you typed" in kept.reason


def test_a_flat_range_test_keeps_the_fixed_lr() -> None:
    """From random weights on a small set the sweep's loss may barely move: its pick is then noise."""
    flat = decided(dataclasses.replace(FACTS, lr_suggestion=1e-6, lr_dip=0.02))["lr"]
    assert flat.value == FIXED["lr"] and "flat curve" in flat.reason
    dipped = decided(dataclasses.replace(FACTS, lr_suggestion=2e-4, lr_dip=0.4))["lr"]
    assert dipped.value == 2e-4 and "suggests" in dipped.reason


def test_the_small_set_gets_the_measured_lr_a_probe_head_and_no_flip() -> None:
    chosen = decided()
    assert chosen["lr"].value == 2e-4 and chosen["head_lr"].value == 2e-4
    assert chosen["no_flip"].value is True and chosen["freeze_epochs"].value == 0
    assert chosen["epochs"].value > FIXED["epochs"] and chosen["patience"].value >= FIXED["patience"]
    assert chosen["lr"].line().startswith("--lr 0.0002: the LR range test suggests")


def test_a_wild_suggestion_is_kept_near_the_fixed_lr() -> None:
    wild = decided(dataclasses.replace(FACTS, lr_suggestion=1.0))["lr"]
    assert wild.value == pytest.approx(FIXED["lr"] * 20) and "kept within 20x" in wild.reason


@pytest.mark.parametrize("batch_size", [8, 32, 64])
def test_fewer_images_never_get_fewer_epochs_and_the_time_cap_holds(batch_size) -> None:
    previous = None
    for images in (10, 40, 100, 250, 1000, 5000, 20000, 200000):
        facts = dataclasses.replace(FACTS, train_images=images, batch_size=batch_size)
        epochs = decided(facts)["epochs"].value
        assert epochs + facts.measurement_epochs <= TIME_CAP * FIXED["epochs"]
        assert previous is None or epochs <= previous
        previous = epochs
    assert previous == FIXED["epochs"]  # a large set trains as long as the fixed recipe


def test_the_capped_length_says_so_and_random_weights_may_take_longer() -> None:
    capped = decided(dataclasses.replace(FACTS, train_images=40))["epochs"]
    assert f"at most {TIME_CAP:g}x the fixed recipe's" in capped.reason
    assert f"about {(capped.value + FACTS.measurement_epochs) / FIXED['epochs']:.1f}x" in capped.reason
    scratch = decided(dataclasses.replace(FACTS, train_images=40, pretrained=False, probe_accuracy=None))
    epochs = scratch["epochs"]
    assert epochs.value + FACTS.measurement_epochs <= SCRATCH_TIME_CAP * FIXED["epochs"]
    assert epochs.value > TIME_CAP * FIXED["epochs"]  # longer, and the line says why
    assert "from random weights a small set needs many more steps" in epochs.reason
    assert f"about {(epochs.value + FACTS.measurement_epochs) / FIXED['epochs']:.1f}x" in epochs.reason


def test_decisions_round_trip_through_json() -> None:
    from vitclassifier.training.auto_recipe import as_json
    decisions = decide(FACTS, {**FIXED, "lr": 1e-4}, {"lr"})
    facts, again = from_json(json.loads(json.dumps(as_json(FACTS, decisions))))
    assert facts == FACTS and again == decisions
    assert [d.line() for d in again] == [d.line() for d in decisions]
