"""Calibration (reporting/calibration.py): a temperature that fixes overconfidence without changing the
top class, only as far as the validation set supports it, and a word when the model is near chance."""
from __future__ import annotations

import json

import pytest
import torch

from vitclassifier.reporting.calibration import calibrate, expected_calibration_error, fit_temperature


def overconfident(count: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits right about 2/3 of the time and far too sure of themselves."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 4, (count,), generator=generator)
    logits = torch.randn(count, 4, generator=generator) * 2
    logits[torch.arange(count), labels] += 1.5
    return logits * 4, labels


def evaluation(logits: torch.Tensor, labels: torch.Tensor) -> dict:
    return {"logits": logits, "labels": labels, "acc": (logits.argmax(1) == labels).float().mean().item()}


def test_a_large_validation_set_gets_the_temperature_it_supports():
    result = calibrate(evaluation(*overconfident(2000)))
    low, high = result["temperature_range"]
    assert low <= result["temperature_fitted"] <= high and high / low < 1.3  # 2000 images pin T down
    assert result["temperature"] == pytest.approx(result["temperature_fitted"], rel=0.1)
    assert result["ece_after"] < result["ece_before"] / 2


def test_a_tiny_validation_set_cannot_push_the_temperature_to_its_cap():
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 5, (10,), generator=generator)
    logits = torch.randn(10, 5, generator=generator)
    logits[torch.arange(10), labels] += 10  # 8 of 10 right, sure of themselves ...
    logits[:2] = 0
    logits[torch.arange(2), (labels[:2] + 1) % 5] = 30  # ... and 2 mistakes, far surer still
    result = calibrate(evaluation(logits, labels))
    assert result["temperature_fitted"] > 10  # what the bare fit asks for on these 10 images
    assert result["temperature"] < result["temperature_fitted"] / 2
    assert "10 validation images support" in result["calibration"]


def test_a_model_near_chance_is_said_to_be_so():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(3000, 5, generator=generator) * 3  # scores that say nothing about the labels
    result = calibrate(evaluation(logits, torch.randint(0, 5, (3000,), generator=generator)))
    assert "barely tells the classes apart" in result["calibration"]


def test_temperature_fixes_overconfidence_and_never_changes_the_top_class():
    torch.manual_seed(0)
    labels = torch.randint(0, 4, (2000,))
    logits = torch.randn(2000, 4) * 2
    logits[torch.arange(2000), labels] += 1.5  # right about 2/3 of the time ...
    logits *= 4  # ... but far too sure of itself
    temperature = fit_temperature(logits, labels)
    assert temperature > 2
    before = expected_calibration_error(logits.softmax(1), labels)
    after = expected_calibration_error((logits / temperature).softmax(1), labels)
    assert after < before / 2
    assert torch.equal((logits / temperature).argmax(1), logits.argmax(1))


@pytest.mark.slow
def test_training_records_the_calibration_in_the_checkpoint(trained_run):
    info = json.loads((trained_run / "best" / "training_info.json").read_text())
    assert info["temperature"] > 0 and info["ece_after"] <= info["ece_before"]

