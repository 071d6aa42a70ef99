"""The small-sample intervals (reporting/intervals.py) on fixed examples, worked by hand or by scipy."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vitclassifier.reporting.intervals import (
    Interval,
    accuracy_interval,
    confusion_of,
    fold_summary,
    macro_f1_interval,
    macro_f1s,
    mean_interval,
    t_quantile,
    wilson_interval,
)
from vitclassifier.reporting.metrics import macro_f1


def test_t_quantile_matches_the_table():
    # the two-sided 95% values every statistics table prints
    for df, table in ((1, 12.706), (2, 4.303), (4, 2.776), (9, 2.262), (30, 2.042)):
        assert t_quantile(0.95, df) == pytest.approx(table, abs=5e-4)


def test_t_quantile_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    for df in (1, 2, 3, 5, 8, 13, 50, 200):
        for level in (0.9, 0.95, 0.99):
            assert t_quantile(level, df) == pytest.approx(stats.t.ppf((1 + level) / 2, df), rel=1e-9)


def test_mean_interval_by_hand():
    # 0.6, 0.7, 0.8: mean 0.7, SD 0.1, SE 0.1 / sqrt(3), t(2) = 4.3027 -> 0.7 +- 0.2484
    value, low, high = mean_interval([0.6, 0.7, 0.8])
    assert value == pytest.approx(0.7)
    half = 4.302653 * 0.1 / math.sqrt(3)
    assert (low, high) == pytest.approx((0.7 - half, 0.7 + half))
    assert (low, high) == pytest.approx((0.45159, 0.94841), abs=1e-5)
    assert mean_interval([0.7, 0.9]) == (pytest.approx(0.8), 0.0, 1.0)  # +- 1.27: kept within a share's range
    with pytest.raises(ValueError):
        mean_interval([0.8])


def test_wilson_interval_of_50_of_60_reads_83_percent_72_to_91():
    interval = wilson_interval(50, 60)
    # by hand: p = 5/6, z = 1.96, n = 60: centre (p + z^2/2n) / (1 + z^2/n) = 0.81328,
    # half z / (1 + z^2/n) * sqrt(p q / n + z^2 / 4n^2) = 0.09359
    assert interval == pytest.approx((50 / 60, 0.81328 - 0.09359, 0.81328 + 0.09359), abs=2e-5)
    assert interval.percent() == "83% (95% CI 72-91%)"
    assert accuracy_interval(50 / 60, 60) == interval


def test_wilson_interval_matches_scipy_at_the_edges():
    stats = pytest.importorskip("scipy.stats")
    for correct, count in ((0, 12), (12, 12), (3, 7), (590, 600)):
        expected = stats.binomtest(correct, count).proportion_ci(0.95, method="wilson")
        _, low, high = wilson_interval(correct, count)
        assert (low, high) == pytest.approx((expected.low, expected.high), abs=1e-9)


def test_a_narrow_interval_keeps_a_decimal():
    assert Interval(0.9912, 0.985, 0.995).percent() == "99.1% (95% CI 98.5-99.5%)"


def test_macro_f1s_agree_with_the_metrics_module():
    rng = np.random.default_rng(0)
    for _ in range(20):
        confusion = rng.integers(0, 6, (4, 4))
        confusion[rng.integers(0, 4)] = 0  # a class absent from validation: left out of the mean
        assert macro_f1s(confusion) == pytest.approx(macro_f1(torch.tensor(confusion)))


def test_macro_f1_interval_holds_its_value_and_narrows_with_more_images():
    confusion = np.array([[8, 2, 0], [1, 6, 3], [0, 2, 8]])
    value, low, high = macro_f1_interval(confusion)
    assert value == pytest.approx(macro_f1(torch.tensor(confusion)))
    assert low < value < high
    _, low_big, high_big = macro_f1_interval(confusion * 20)
    assert high_big - low_big < (high - low) / 2  # ~1/sqrt(20) as wide
    assert macro_f1_interval(confusion) == (value, low, high)  # seeded
    assert macro_f1_interval(np.eye(3, dtype=int) * 5)[1:] == (1.0, 1.0)  # never wrong: nothing to vary


def test_confusion_of_predictions_and_labels():
    assert confusion_of([0, 1, 1, 2], [0, 1, 2, 2], 3).tolist() == [[1, 0, 0], [0, 1, 0], [0, 1, 1]]


def test_fold_summary_recall_per_class_over_the_folds_that_saw_it():
    folds = [{"acc": 0.6, "macro_f1": 0.5, "confusion": [[3, 1, 0], [0, 2, 0], [0, 0, 0]]},
             {"acc": 0.7, "macro_f1": 0.6, "confusion": [[2, 2, 0], [1, 1, 0], [0, 0, 0]]},
             {"acc": 0.8, "macro_f1": 0.7, "confusion": [[4, 0, 0], [0, 2, 0], [0, 0, 1]]}]
    summary = fold_summary(folds)
    assert summary["folds"] == 3
    assert summary["acc"] == pytest.approx(list(mean_interval([0.6, 0.7, 0.8])))
    assert summary["macro_f1"][0] == pytest.approx(0.6)
    assert summary["recall"][0] == pytest.approx(list(mean_interval([0.75, 0.5, 1.0])))
    assert summary["recall"][1] == pytest.approx(list(mean_interval([1.0, 0.5, 1.0])))
    assert summary["recall"][2] == [1.0, 1.0, 1.0]  # one fold saw it: no spread to measure
