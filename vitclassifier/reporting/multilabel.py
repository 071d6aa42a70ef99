"""Metrics of several labels per image, from every image's probabilities and its multi-hot targets: mean
average precision (macro mAP, the ranking score that picks the best model), micro and macro F1 and the
exact-match ratio at the thresholds, per-class AP, precision, recall and F1; and the per-class thresholds
fitted on validation (F1-optimal, 0.5 for a class with too few positives to fit on).

Average precision is computed as scikit-learn's ``average_precision_score`` computes it (a step-wise
sum over distinct scores; tests check they agree), so the core needs no scikit-learn.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from vitclassifier.files import write_via_temp
from vitclassifier.reporting.plots import drawn, pyplot, write_curves
from vitclassifier.tables import dict_rows, write_csv

DEFAULT_THRESHOLD = 0.5
PROBLEM_TYPE = "multi_label_classification"  # config.json: transformers.pipeline then applies a sigmoid
MIN_POSITIVES = 3  # fewer validation positives than this: the class keeps DEFAULT_THRESHOLD


def average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
    """AP of one class: sum over the distinct scores, from the highest, of (recall gained) x precision
    there; nan without a positive (as scikit-learn, which also warns)."""
    if targets.sum() == 0:
        return float("nan")
    precision, recall = precision_recall(scores, targets)
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def counts_at(probs: np.ndarray, targets: np.ndarray, thresholds: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per class: true positives, predicted positives, actual positives at ``thresholds``."""
    predicted = probs >= thresholds[None, :]
    return (predicted & (targets == 1)).sum(0), predicted.sum(0), (targets == 1).sum(0)


def _ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.where(b > 0, a / np.maximum(b, 1), 0.0)


def multi_label_scores(probs: np.ndarray, targets: np.ndarray, thresholds: np.ndarray) -> dict:
    """mAP (mean over the classes with a positive), micro/macro F1, exact match and the per-class table."""
    targets = targets.astype(int)
    ap = np.array([average_precision(probs[:, c], targets[:, c]) for c in range(targets.shape[1])])
    hits, predicted, actual = counts_at(probs, targets, thresholds)
    precision, recall = _ratio(hits, predicted), _ratio(hits, actual)
    f1 = _ratio(2 * hits, predicted + actual)
    present = actual > 0
    micro = 2 * hits.sum() / max(1, predicted.sum() + actual.sum())
    exact = ((probs >= thresholds[None, :]) == (targets == 1)).all(1).mean() if len(targets) else 0.0
    return {
        "map": float(np.nanmean(ap)) if present.any() else 0.0,
        "micro_f1": float(micro),
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "acc": float(exact),  # exact match: every label of the image right
        "per_class": {"ap": ap, "precision": precision, "recall": recall, "f1": f1, "support": actual,
                      "threshold": thresholds},
    }


def fit_thresholds(probs: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """One threshold per class: the one of the class's validation probabilities that gives the best F1
    (the midpoint to the next lower probability, so that it generalises); DEFAULT_THRESHOLD for a class
    with fewer than MIN_POSITIVES positives, whose F1 optimum would be noise."""
    thresholds = np.full(targets.shape[1], DEFAULT_THRESHOLD)
    for c in range(targets.shape[1]):
        column, truth = probs[:, c], targets[:, c] == 1
        if truth.sum() < MIN_POSITIVES:
            continue
        order = np.argsort(-column, kind="mergesort")
        sorted_probs, hits = column[order], np.cumsum(truth[order])
        last = np.r_[np.nonzero(np.diff(sorted_probs))[0], len(column) - 1]
        f1 = 2 * hits[last] / (last + 1 + truth.sum())
        best = last[int(np.argmax(f1))]
        below = sorted_probs[best + 1] if best + 1 < len(column) else 0.0
        thresholds[c] = float((sorted_probs[best] + below) / 2)
    return thresholds


def threshold_map(labels: list[str], thresholds: np.ndarray) -> dict[str, float]:
    """{label: threshold}, as checkpoints and exports record them."""
    return {name: round(float(t), 6) for name, t in zip(labels, thresholds)}


def thresholds_of(info: dict, labels: list[str]) -> np.ndarray:
    """The per-class thresholds a checkpoint records (DEFAULT_THRESHOLD where one is absent)."""
    saved = info.get("thresholds") or {}
    return np.array([float(saved.get(name, DEFAULT_THRESHOLD)) for name in labels])


def per_class_rows(labels: list[str], scores: dict) -> list[dict]:
    """per_class.csv's rows for several labels per image."""
    table = scores["per_class"]
    return [{"class": name, **{key: f"{float(table[key][i]):.4f}" for key in ("ap", "precision", "recall",
                                                                              "f1", "threshold")},
             "support": int(table["support"][i])} for i, name in enumerate(labels)]


def sigmoid(logits: torch.Tensor) -> np.ndarray:
    return torch.sigmoid(logits.float()).cpu().numpy()


def precision_recall(scores: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One label's (precision, recall) at each distinct score, from the highest down."""
    order = np.argsort(-scores, kind="mergesort")
    last = np.r_[np.nonzero(np.diff(scores[order]))[0], len(scores) - 1]  # each distinct score's last index
    hits = np.cumsum(targets[order])[last]
    return hits / (last + 1), hits / max(1, targets.sum())


def write_pr_curves(probs: np.ndarray, targets: np.ndarray, labels: list[str], scores: dict,
                    path: Path) -> None:
    """pr_curves.png: every label's precision-recall curve, its AP in the legend, its threshold marked."""
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(6, 5))
    table = scores["per_class"]
    for c, name in enumerate(drawn(labels)):
        if targets[:, c].sum() == 0:
            continue
        precision, recall = precision_recall(probs[:, c], targets[:, c])
        line, = axis.step(recall, precision, where="post", label=f"{name} (AP {table['ap'][c]:.2f})")
        axis.plot(table["recall"][c], table["precision"][c], "o", color=line.get_color())
    axis.set(xlabel="recall", ylabel="precision", xlim=(0, 1.02), ylim=(0, 1.02),
             title="precision-recall per label (dot: its threshold)")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    write_via_temp(path, lambda tmp: figure.savefig(tmp, format="png", dpi=100))
    plt.close(figure)


def write_multi_label_report(directory: Path, labels: list[str], scores: dict, rows: list[dict] | None,
                             probs: np.ndarray | None = None, targets: np.ndarray | None = None
                             ) -> list[Path]:
    """per_class.csv (AP, precision, recall, F1 at the thresholds, the thresholds, support), pr_curves.png
    (given the probabilities and targets) and curves.png; returns the files written."""
    directory.mkdir(parents=True, exist_ok=True)
    table = per_class_rows(labels, scores)
    written = [directory / "per_class.csv"]
    write_csv(written[0], dict_rows(list(table[0]), table))
    if probs is not None and targets is not None and len(targets):
        write_pr_curves(probs, targets.astype(int), labels, scores, directory / "pr_curves.png")
        written.append(directory / "pr_curves.png")
    if rows:
        write_curves(rows, directory / "curves.png")
        written.append(directory / "curves.png")
    return written


def scores_line(scores: dict, at_half: dict) -> str:
    """One line: the scores at the fitted thresholds, against the plain 0.5."""
    return (f"Validation, several labels per image: mAP {scores['map']:.3f}; at the per-class thresholds "
            f"micro-F1 {scores['micro_f1']:.3f}, macro-F1 {scores['macro_f1']:.3f}, exact match "
            f"{scores['acc']:.3f} (at 0.5: micro-F1 {at_half['micro_f1']:.3f}, macro-F1 "
            f"{at_half['macro_f1']:.3f}, exact match {at_half['acc']:.3f})")
