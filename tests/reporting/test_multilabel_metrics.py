"""Metrics of several labels per image (reporting/multilabel.py) against scikit-learn, and the thresholds
fitted on a fixed example."""
from __future__ import annotations

import numpy as np
import pytest

from vitclassifier.reporting.multilabel import (
    DEFAULT_THRESHOLD,
    average_precision,
    fit_thresholds,
    multi_label_scores,
)

metrics = pytest.importorskip("sklearn.metrics")


def test_scores_agree_with_scikit_learn() -> None:
    rng = np.random.default_rng(0)
    targets = (rng.random((60, 4)) < [0.5, 0.2, 0.05, 0.7]).astype(int)
    targets[0, 2] = 1  # every class has a positive
    probs = np.round(np.clip(targets * 0.3 + rng.random((60, 4)) * 0.7, 0, 1), 1)  # rounded: many ties
    thresholds = np.array([0.5, 0.4, 0.6, 0.5])
    scores = multi_label_scores(probs, targets, thresholds)
    predicted = (probs >= thresholds).astype(int)
    for c in range(4):
        assert average_precision(probs[:, c], targets[:, c]) == pytest.approx(
            metrics.average_precision_score(targets[:, c], probs[:, c]))
    assert scores["map"] == pytest.approx(metrics.average_precision_score(targets, probs, average="macro"))
    assert scores["micro_f1"] == pytest.approx(metrics.f1_score(targets, predicted, average="micro"))
    assert scores["macro_f1"] == pytest.approx(metrics.f1_score(targets, predicted, average="macro"))
    assert scores["acc"] == pytest.approx(metrics.accuracy_score(targets, predicted))  # exact match
    recall = metrics.recall_score(targets, predicted, average=None)
    assert scores["per_class"]["recall"] == pytest.approx(recall)


def test_thresholds_fitted_on_a_fixed_example() -> None:
    # class 0: positives at 0.9, 0.6, 0.35, negatives at 0.5, 0.2: the F1 optimum keeps all three
    # positives (F1 6/7 against 4/5 at 0.6), cut halfway between 0.35 and the next lower 0.2
    probs = np.array([[0.9, 0.9], [0.6, 0.1], [0.35, 0.2], [0.5, 0.3], [0.2, 0.4]])
    targets = np.array([[1, 1], [1, 0], [1, 0], [0, 0], [0, 0]])
    thresholds = fit_thresholds(probs, targets)
    assert thresholds[0] == pytest.approx(0.275)
    assert thresholds[1] == DEFAULT_THRESHOLD  # one positive is too few to fit on
    fitted = multi_label_scores(probs, targets, thresholds)["per_class"]["f1"][0]
    assert fitted == pytest.approx(6 / 7)
    assert fitted > multi_label_scores(probs, targets, np.full(2, 0.5))["per_class"]["f1"][0]
