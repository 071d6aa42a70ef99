"""What a run shows the user, written into its output folder:

  curves.png                  loss and accuracy per epoch, train and validation
  confusion_matrix.png / .csv normalised per true class, class names on the axes
  per_class.csv               precision, recall, F1 and support per class
  mistakes.png                the validation images the model got most confidently wrong

All from a confusion matrix and the evaluation outputs of loop.evaluate (logits, labels, paths).
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from vitclassifier.reporting.metrics import (
    expected_calibration_error,
    fit_temperature,
    fit_temperatures,
    per_class_scores,
)
from vitclassifier.reporting.plots import write_confusion, write_curves, write_mistakes
from vitclassifier.tables import write_csv

MAX_MISTAKES = 16
BOOTSTRAP = 100  # resamples of the validation set that show which temperatures it supports
BOOTSTRAP_ELEMENTS = 2**22  # logits x resamples: the work above which the set is large enough without it
SUPPORTED = (0.05, 0.95)  # the range of the resampled fits taken as supported: 90%


def normalised_confusion(confusion: torch.Tensor) -> torch.Tensor:
    """Each row (true class) divided by its count: the share of that class predicted as each label."""
    rows = confusion.double()
    return rows / rows.sum(1, keepdim=True).clamp(min=1)


def write_confusion_table(normalised: torch.Tensor, labels: list[str], path: Path) -> None:
    write_csv(path, [["true \\ predicted", *labels],
                     *([name, *(f"{v:.4f}" for v in row)] for name, row in zip(labels, normalised.tolist()))])


def write_per_class(confusion: torch.Tensor, labels: list[str], path: Path) -> None:
    scores = per_class_scores(confusion)
    rows = ([name, *(f"{scores[score][i]:.4f}" for score in ("precision", "recall", "f1")),
             int(scores["support"][i])] for i, name in enumerate(labels))
    write_csv(path, [["class", "precision", "recall", "f1", "support"], *rows])


def most_confident_mistakes(probabilities: torch.Tensor, labels: torch.Tensor, paths: list[str],
                            limit: int = MAX_MISTAKES) -> list[tuple[str, int, int, float]]:
    """(path, true, predicted, confidence) of the wrong predictions, the most confident first."""
    confidence, predicted = probabilities.max(dim=1)
    wrong = (predicted != labels).nonzero().flatten().tolist()
    wrong.sort(key=lambda i: -confidence[i].item())
    return [(paths[i], labels[i].item(), predicted[i].item(), confidence[i].item()) for i in wrong[:limit]]


def write_report(directory: Path, labels: list[str], evaluation: dict, temperature: float = 1.0,
                 rows: list[dict] | None = None, explain: Callable[[list], list] | None = None) -> list[Path]:
    """Every picture and table for one evaluated model; returns the files written. ``explain``, given
    the most confident mistakes, returns the maps mistakes.png shows beside each (plots.write_mistakes)."""
    directory.mkdir(parents=True, exist_ok=True)
    written = [directory / name for name in ("confusion_matrix.png", "confusion_matrix.csv", "per_class.csv",
                                             "mistakes.png")]
    normalised = normalised_confusion(evaluation["confusion"])
    write_confusion(normalised, labels, written[0])
    write_confusion_table(normalised, labels, written[1])
    write_per_class(evaluation["confusion"], labels, written[2])
    probabilities = (evaluation["logits"] / temperature).softmax(dim=1)
    mistakes = most_confident_mistakes(probabilities, evaluation["labels"], evaluation["paths"])
    write_mistakes(mistakes, labels, written[3], explain(mistakes) if explain and mistakes else None)
    if rows:
        write_curves(rows, directory / "curves.png")
        written.append(directory / "curves.png")
    return written


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
