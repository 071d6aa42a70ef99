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

from vitclassifier.reporting.metrics import per_class_scores
from vitclassifier.reporting.plots import write_confusion, write_curves, write_mistakes
from vitclassifier.tables import write_csv

MAX_MISTAKES = 16


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
