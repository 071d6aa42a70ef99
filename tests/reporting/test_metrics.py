"""Confusion-matrix metrics (reporting/metrics.py): per-class precision and recall, and a macro-F1 over
the classes that occur."""
from __future__ import annotations

import pytest
import torch

from vitclassifier.reporting.metrics import macro_f1, per_class_scores


def test_macro_f1_from_a_confusion_matrix():
    confusion = torch.tensor([[3, 1, 0], [0, 2, 0], [0, 0, 0]])  # rows: true class; class 2 never occurs
    scores = per_class_scores(confusion)
    assert scores["precision"][:2].tolist() == pytest.approx([1.0, 2 / 3])
    assert scores["recall"][:2].tolist() == pytest.approx([0.75, 1.0])
    assert macro_f1(confusion) == pytest.approx((6 / 7 + 0.8) / 2)  # absent classes don't count

