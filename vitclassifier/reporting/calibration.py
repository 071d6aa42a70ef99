"""Calibration: how sure the model sounds against how often it is right, and the softmax temperature
that fixes it. Every decision lives here: the fit (Guo et al., 2017), how far the validation set lets
it move from 1 (a bootstrap), when it is left at 1, and the sentence the run prints. After training,
training/final_report.py calls ``calibrate_run``; model/checkpoint.fold_temperature stores the result
in best/'s head and training_info.json; train.py --evaluate reports the calibration error."""
from __future__ import annotations

from pathlib import Path

import torch

from vitclassifier.text import printable

TEMPERATURE_BOUNDS = (0.05, 20.0)  # beyond these the confidences are all ~100% or all ~1/classes anyway
BOOTSTRAP = 100  # resamples of the validation set that show which temperatures it supports
BOOTSTRAP_ELEMENTS = 2**22  # logits x resamples: the work above which the set is large enough without it
SUPPORTED = (0.05, 0.95)  # the range of the resampled fits taken as supported: 90%
NOT_CALIBRATED = {"temperature": 1.0, "calibration": "--no-calibrate"}  # what train.py --no-calibrate records


def expected_calibration_error(probabilities: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> float:
    """How far confidence is from accuracy: the gap per confidence bin, weighted by the bin's share."""
    confidence, predicted = probabilities.max(dim=1)
    correct = (predicted == labels).double()
    edges = torch.linspace(0, 1, bins + 1)
    error = 0.0
    for low, high in zip(edges[:-1], edges[1:]):
        in_bin = (confidence > low) & (confidence <= high)
        if in_bin.any():
            error += in_bin.double().mean().item() * abs(confidence[in_bin].double().mean().item()
                                                         - correct[in_bin].mean().item())
    return error


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The temperature T that minimises the validation NLL of softmax(logits / T) (Guo et al., 2017).
    Dividing by one positive number never changes which class is on top, only how sure it sounds."""
    return fit_temperatures(logits, labels, torch.ones(1, len(labels)))[0].item()


def fit_temperatures(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor,
                     steps: int = 60) -> torch.Tensor:
    """For each row of ``weights`` (B, n: how often each of the n validation rows counts, e.g. a bootstrap
    resample), the T in TEMPERATURE_BOUNDS minimising the weighted NLL, all rows at once. The NLL is
    convex in 1/T, so Newton's method on 1/T inside a bracket that shrinks by the gradient's sign
    converges in a few steps, with no learning rate to tune."""
    z = logits.float()
    true = z.gather(1, labels[:, None]).squeeze(1)
    share = weights.float() / weights.float().sum(1, keepdim=True).clamp(min=1e-12)
    low = torch.full((len(weights),), 1 / TEMPERATURE_BOUNDS[1])
    high = torch.full_like(low, 1 / TEMPERATURE_BOUNDS[0])
    beta = torch.ones_like(low)
    for _ in range(steps):
        p = torch.softmax(beta[:, None, None] * z, dim=2)
        mean = (p * z).sum(2)
        slope = (share * (mean - true)).sum(1)  # d NLL / d beta
        curvature = (share * ((p * z * z).sum(2) - mean**2)).sum(1)
        low, high = torch.where(slope < 0, beta, low), torch.where(slope > 0, beta, high)
        newton = beta - slope / curvature.clamp(min=1e-12)
        previous, beta = beta, torch.where((newton > low) & (newton < high), newton, (low + high) / 2)
        if ((beta - previous).abs() <= 1e-5 * beta).all():  # every row converged
            break
    return 1 / beta


def supported_range(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, float] | None:
    """The temperatures the validation set supports: the 90% range of the fit over BOOTSTRAP resamples
    of it (seeded: the same outputs give the same range). None for a set so large that the fit alone
    is precise (and resampling it would cost more than the fit is worth)."""
    count, classes = logits.shape
    if count * classes * BOOTSTRAP > BOOTSTRAP_ELEMENTS:
        return None
    draws = torch.randint(0, count, (BOOTSTRAP, count), generator=torch.Generator().manual_seed(0))
    weights = torch.zeros(BOOTSTRAP, count).scatter_add_(1, draws, torch.ones(BOOTSTRAP, count))
    low, high = fit_temperatures(logits, labels, weights).quantile(torch.tensor(SUPPORTED)).tolist()
    return low, high


def calibrate(evaluation: dict) -> dict:
    """Fit the softmax temperature on the validation outputs, limited to what the validation set
    supports: T moves away from 1 only as far as the 90% range of its bootstrap fits allows (a tiny set
    or a few confident mistakes can ask for T = 20, which turns every confidence into 1/classes). Returns
    the temperature, the fit, the range, the expected calibration error before/after and a sentence
    saying what was done, for the run's summary and training_info.json."""
    logits, labels = evaluation["logits"], evaluation["labels"]
    fitted = fit_temperature(logits, labels)
    supported = supported_range(logits, labels)
    temperature = fitted if supported is None else min(max(1.0, supported[0]), supported[1])
    before = expected_calibration_error(logits.softmax(1), labels)
    after = expected_calibration_error((logits / temperature).softmax(1), labels)
    images = f"{len(labels)} validation images"
    if after > before:  # e.g. a model near chance, where the best fit is "know nothing": keep it as it was
        temperature, after = 1.0, before
        note = f"temperature left at 1: fitting it on the {images} would not lower the calibration error"
    elif supported is None:
        note = f"temperature {temperature:.3f}, fitted on the {images}"
    else:
        low, high = supported
        note = (f"temperature {temperature:.3f} (fitted {fitted:.3f}; the {images} support {low:.3f} to "
                f"{high:.3f} in 90% of {BOOTSTRAP} resamples, and T moves from 1 only that far)")
    confidence = (logits / temperature).softmax(1).max(1).values.mean().item()
    classes = logits.shape[1]
    if confidence < 1.5 / classes:
        note += (f"; the confidences stay near 1/{classes}: the model barely tells the classes apart "
                 f"(validation accuracy {evaluation['acc']:.1%})")
    return {"temperature": temperature, "temperature_fitted": fitted,
            "temperature_range": list(supported) if supported else None, "ece_before": before,
            "ece_after": after, "calibration": note}


def calibrate_run(evaluation: dict, fit: bool) -> dict:
    """The calibration of a finished run: fitted (``calibrate``), or NOT_CALIBRATED for --no-calibrate."""
    return calibrate(evaluation) if fit else dict(NOT_CALIBRATED)


def calibration_line(calibration: dict, best: Path) -> str:
    """What a run prints about its fitted calibration: the temperature, the error before and after,
    and, when the temperature is not 1, that it was folded into ``best``'s head."""
    folded = (f". Folded into {printable(best)}'s head: every tool that loads it gives "
              f"these confidences" if calibration["temperature"] != 1.0 else "")
    return (f"Calibration: {calibration['calibration']}; expected calibration error "
            f"{calibration['ece_before'] * 100:.1f}% -> {calibration['ece_after'] * 100:.1f}%{folded}")
