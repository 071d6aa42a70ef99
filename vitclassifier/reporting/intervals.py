"""How much a small validation set's figures can be trusted: 95% intervals, so a run with 60 validation
images says "83% (95% CI 72-91%)" instead of a bare "83%".

- across K folds: the mean and its Student t interval (K - 1 degrees of freedom);
- one accuracy on n images: the Wilson score interval (right near 0% and 100%, unlike mean +- 2 SE);
- macro-F1: a percentile bootstrap over the validation images, drawn from the confusion matrix.

Standard library and numpy only (scipy is not a requirement of the tool).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import NormalDist
from typing import NamedTuple

import numpy as np

LEVEL = 0.95
SMALL_SET = 1000  # validation sets under this many images: the summary line gives the accuracy's interval
BOOTSTRAP = 2000  # resamples of the validation set for the macro-F1 interval


class Interval(NamedTuple):
    """A figure and its interval, all as fractions (0.83, not 83)."""
    value: float
    low: float
    high: float

    def percent(self, level: float = LEVEL) -> str:
        """``83% (95% CI 72-91%)``; one decimal where whole percents would hide the width."""
        digits = 1 if self.high - self.low < 0.02 else 0
        return (f"{self.value:.{digits}%} ({level:.0%} CI {self.low * 100:.{digits}f}-"
                f"{self.high * 100:.{digits}f}%)")


def t_quantile(level: float, df: int) -> float:
    """The two-sided Student t critical value: P(|T| <= t) = ``level`` with ``df`` degrees of freedom
    (2.776 for 95% and 4), by bisection on the closed form of the t distribution for whole df."""
    low, high = 0.0, 1.0
    while t_central(high, df) < level:
        high *= 2
    for _ in range(100):
        middle = (low + high) / 2
        low, high = (middle, high) if t_central(middle, df) < level else (low, middle)
    return (low + high) / 2


def t_central(t: float, df: int) -> float:
    """P(|T| <= t) for Student's t with a whole number ``df`` of degrees of freedom (Abramowitz and
    Stegun 26.7.3 and 26.7.4: a finite series in cos(theta), theta = atan(t / sqrt(df)))."""
    theta = math.atan(t / math.sqrt(df))
    cos2 = math.cos(theta) ** 2
    if df % 2:  # odd: 2/pi (theta + sin cos (1 + 2/3 cos^2 + 2*4/(3*5) cos^4 + ...)), the series to df - 2
        term, total = 1.0, 1.0 if df > 1 else 0.0
        for j in range(1, (df - 1) // 2):
            term *= cos2 * (2 * j) / (2 * j + 1)
            total += term
        return 2 / math.pi * (theta + math.sin(theta) * math.cos(theta) * total)
    term, total = 1.0, 1.0  # even: sin (1 + 1/2 cos^2 + 1*3/(2*4) cos^4 + ...), the series to df - 2
    for j in range(1, df // 2):
        term *= cos2 * (2 * j - 1) / (2 * j)
        total += term
    return math.sin(theta) * total


def mean_interval(values: Sequence[float], level: float = LEVEL,
                  bounds: tuple[float, float] = (0.0, 1.0)) -> Interval:
    """The mean of ``values`` (one per fold) and its Student t interval, kept within ``bounds`` (a share
    cannot pass 100%). At least two values: one fold says nothing about the spread."""
    if len(values) < 2:
        raise ValueError("an interval across folds needs at least 2 values")
    mean = sum(values) / len(values)
    spread = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1) / len(values))
    half = t_quantile(level, len(values) - 1) * spread
    return Interval(mean, max(bounds[0], mean - half), min(bounds[1], mean + half))


def wilson_interval(correct: int, count: int, level: float = LEVEL) -> Interval:
    """The accuracy ``correct / count`` and its Wilson score interval (Wilson 1927)."""
    if count <= 0:
        raise ValueError("an accuracy needs at least one image")
    z = NormalDist().inv_cdf((1 + level) / 2)
    share = correct / count
    centre = (share + z * z / (2 * count)) / (1 + z * z / count)
    half = z / (1 + z * z / count) * math.sqrt(share * (1 - share) / count + z * z / (4 * count * count))
    return Interval(share, max(0.0, centre - half), min(1.0, centre + half))


def accuracy_interval(accuracy: float, count: int, level: float = LEVEL) -> Interval:
    """wilson_interval from an accuracy as training_info.json records it (val_acc, val_images)."""
    return wilson_interval(round(accuracy * count), count, level)


def small_set_note(accuracy: float, count: int) -> str:
    """The interval a summary line gives an accuracy measured on fewer than SMALL_SET images ("" on more):
    on 60 images "83%" means anything from 72% to 91%."""
    if not 0 < count < SMALL_SET:
        return ""
    interval = accuracy_interval(accuracy, count)
    return f" ({LEVEL:.0%} CI {interval.low:.0%}-{interval.high:.0%} on {count} images)"


def confusion_of(predictions: Sequence[int], labels: Sequence[int], classes: int) -> np.ndarray:
    """The confusion matrix of counts (rows: true class, columns: predicted)."""
    confusion = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(confusion, (np.asarray(labels, dtype=np.int64), np.asarray(predictions, dtype=np.int64)), 1)
    return confusion


def macro_f1s(confusions: np.ndarray) -> np.ndarray:
    """Macro-F1 of each (..., C, C) confusion matrix, as metrics.macro_f1 defines it: the mean F1 over
    the classes present (true count > 0); 0 for a class never predicted."""
    confusions = np.asarray(confusions, dtype=np.float64)
    hits = np.diagonal(confusions, axis1=-2, axis2=-1)
    support, predicted = confusions.sum(-1), confusions.sum(-2)
    f1 = np.where(support + predicted > 0, 2 * hits / np.maximum(support + predicted, 1), 0.0)
    present = support > 0
    return (f1 * present).sum(-1) / np.maximum(present.sum(-1), 1)


def macro_f1_interval(confusion: np.ndarray | Sequence[Sequence[int]], level: float = LEVEL,
                      resamples: int = BOOTSTRAP, seed: int = 0) -> Interval:
    """Macro-F1 of ``confusion`` (counts) with a percentile bootstrap interval: the n validation images
    are drawn again n times with replacement, ``resamples`` times (seeded: the same matrix gives the
    same interval). A draw is a multinomial over the matrix's cells, so it costs C^2, not n, per
    resample. Use confusion_of for (predictions, labels)."""
    confusion = np.asarray(confusion, dtype=np.int64)
    count = int(confusion.sum())
    if count <= 0:
        raise ValueError("a macro-F1 needs at least one image")
    draws = np.random.default_rng(seed).multinomial(count, confusion.ravel() / count, size=resamples)
    scores = macro_f1s(draws.reshape(resamples, *confusion.shape))
    low, high = np.quantile(scores, [(1 - level) / 2, (1 + level) / 2])
    return Interval(float(macro_f1s(confusion)), float(low), float(high))


def fold_summary(folds: Sequence[dict], level: float = LEVEL) -> dict:
    """Across K folds, each ``{"acc", "macro_f1", "confusion"}`` (the confusion matrix optional): the
    mean accuracy and macro-F1 with their t intervals, and each class's recall over the folds that
    validated it (None for a class no fold saw). Plain lists, ready for training_info.json."""
    summary = {"folds": len(folds),
               "acc": list(mean_interval([fold["acc"] for fold in folds], level)),
               "macro_f1": list(mean_interval([fold["macro_f1"] for fold in folds], level))}
    if all("confusion" in fold for fold in folds):
        matrices = np.asarray([fold["confusion"] for fold in folds], dtype=np.float64)
        support = matrices.sum(-1)
        recalls = np.diagonal(matrices, axis1=-2, axis2=-1) / np.maximum(support, 1)
        summary["recall"] = [per_class_recall(recalls[support[:, c] > 0, c].tolist(), level)
                             for c in range(matrices.shape[-1])]
    return summary


def per_class_recall(values: list[float], level: float) -> list[float] | None:
    """One class's recall across the folds that validated it: [mean, low, high], the interval collapsed
    onto the mean where a single fold saw the class."""
    if not values:
        return None
    return list(mean_interval(values, level)) if len(values) > 1 else [values[0]] * 3
