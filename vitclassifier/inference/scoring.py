"""Scoring a prediction run over labelled data (predict.py --data) from its rows, as they pass on
their way into the output file: no second pass over the images, and rows kept from an earlier
session (--resume) or written by other processes (torchrun) count the same. The figures are those
of ``train.py --evaluate``: top-1, top-3 (of the top-k shown, when --top-k is under 3), macro-F1
from the confusion matrix, and the calibration error over 15 confidence bins."""
from __future__ import annotations

from bisect import bisect_left

import torch

from vitclassifier.reporting.metrics import macro_f1

BINS = 15  # as reporting/calibration.expected_calibration_error


class Score:
    """Running counts over the rows of readable, labelled images."""

    def __init__(self, labels: list[str], k: int):
        self.index = {name: i for i, name in enumerate(labels)}
        self.confusion = torch.zeros(len(labels), len(labels), dtype=torch.int64)
        self.top = min(3, k)
        self.count = self.top_hits = 0
        self.edges = torch.linspace(0, 1, BINS + 1).tolist()
        self.bins = [[0, 0.0, 0] for _ in range(BINS)]  # images, summed confidence, correct

    def add(self, row: dict) -> None:
        if row["error"] or row.get("true_label") is None:
            return
        truth, guess = self.index[row["true_label"]], self.index[row["labels"][0]]
        self.confusion[truth, guess] += 1
        self.count += 1
        self.top_hits += row["true_label"] in row["labels"][: self.top]
        confidence = row["confidences"][0]
        where = bisect_left(self.edges, min(confidence, 1.0)) - 1  # (low, high], as the ECE counts it
        if where >= 0:
            self.bins[where][0] += 1
            self.bins[where][1] += confidence
            self.bins[where][2] += truth == guess

    def calibration_error(self) -> float:
        return sum(abs(total / images - correct / images) * images / self.count
                   for images, total, correct in self.bins if images)

    def line(self, where: str) -> str:
        """The one-line summary, as train.py --evaluate prints it (without the loss: rows hold
        calibrated confidences, not logits)."""
        if not self.count:
            return f"{where}: no readable labelled image to score"
        acc = self.confusion.diag().sum().item() / self.count
        top = self.top_hits / self.count
        return (f"{where}: {self.count} images | acc {acc:.3f} top{self.top} {top:.3f} "
                f"macro-F1 {macro_f1(self.confusion):.3f} | calibration error "
                f"{self.calibration_error() * 100:.1f}%")
