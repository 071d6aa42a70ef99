"""Validation metrics from a confusion matrix, and the per-epoch metrics.csv.

A confusion matrix of counts (rows: true class, columns: predicted) holds everything needed for
accuracy, per-class precision/recall/F1 and macro-F1, and it sums exactly across processes.
"""
from __future__ import annotations

import csv
from pathlib import Path

import torch

from vitclassifier.tables import dict_rows, write_csv

METRIC_FIELDS = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "val_top3", "val_macro_f1",
                 "ema_val_loss", "ema_val_acc", "ema_val_macro_f1", "lr", "seconds"]
SELECT_BY = {  # --select-by: the score to maximise, ties broken by the lower validation loss
    "accuracy": lambda stats: (stats["acc"], -stats["loss"]),
    "macro-f1": lambda stats: (stats["macro_f1"], -stats["loss"]),
    "loss": lambda stats: (-stats["loss"],),
    "map": lambda stats: (stats["map"], -stats["loss"]),  # several labels per image
}
MULTI_LABEL_FIELDS = ["val_map", "val_micro_f1", "ema_val_map", "ema_val_micro_f1"]


def per_class_scores(confusion: torch.Tensor) -> dict[str, torch.Tensor]:
    """Precision, recall, F1 and support per class; 0 where a class was never predicted or seen."""
    confusion = confusion.double()
    hits = confusion.diag()
    predicted, support = confusion.sum(0), confusion.sum(1)
    precision = torch.where(predicted > 0, hits / predicted.clamp(min=1), torch.zeros_like(hits))
    recall = torch.where(support > 0, hits / support.clamp(min=1), torch.zeros_like(hits))
    both = precision + recall
    f1 = torch.where(both > 0, 2 * precision * recall / both.clamp(min=1e-12), torch.zeros_like(hits))
    return {"precision": precision, "recall": recall, "f1": f1, "support": support}


def macro_f1(confusion: torch.Tensor) -> float:
    """Mean F1 over the classes present in the validation set: every class counts the same,
    however rare, which is what matters on imbalanced data."""
    scores = per_class_scores(confusion)
    present = scores["support"] > 0
    return scores["f1"][present].mean().item() if present.any() else 0.0


def read_metrics(path: Path, up_to_epoch: int) -> list[dict]:
    """Rows of an earlier metrics.csv up to ``up_to_epoch`` (to continue it on --resume)."""
    if not path.is_file():
        return []
    with open(path, newline="") as handle:
        return [row for row in csv.DictReader(handle) if int(row["epoch"]) <= up_to_epoch]


def write_metrics(path: Path, rows: list[dict]) -> None:
    """Rewrite metrics.csv atomically (a temporary file renamed over it)."""
    extra = MULTI_LABEL_FIELDS if rows and "val_map" in rows[0] else []  # several labels per image
    write_csv(path, dict_rows(METRIC_FIELDS + extra, rows))


def new_totals() -> dict:
    """Running sums of one training epoch (and the LR it started with)."""
    return {"loss": 0.0, "top1": 0, "count": 0, "lr": 0.0}


def metrics_row(epoch: int, totals: dict, val: dict, ema: dict | None, seconds: float) -> dict:
    """One line of metrics.csv."""
    count = max(1, totals["count"])
    row = {
        "epoch": epoch,
        "train_loss": f"{totals['loss'] / count:.6f}",
        "train_acc": f"{totals['top1'] / count:.6f}",
        "lr": f"{totals['lr']:.3e}",
        "seconds": f"{seconds:.1f}",
    }
    for prefix, stats in (("val_", val), ("ema_val_", ema)):
        for name in ("loss", "acc", "top3", "macro_f1", *(("map", "micro_f1") if "map" in val else ())):
            row[prefix + name] = f"{stats[name]:.6f}" if stats and name in stats else ""
    return row
