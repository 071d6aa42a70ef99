"""benchmarks/small_data.py's data side: seeded small samples with a held-out test part, written as class
folders of upscaled PNGs (scikit-learn's digits: it ships its data, so no download)."""
from __future__ import annotations

import sys

import numpy as np
import pytest
from helpers import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
small_data = pytest.importorskip("small_data")


def test_sample_split_is_seeded_disjoint_and_nested_over_n():
    labels = np.repeat(np.arange(4), 30)
    train10, test = small_data.sample_split(labels, 10, 5, seed=1)
    train20, test_again = small_data.sample_split(labels, 20, 5, seed=1)
    assert test == test_again  # every N of a seed is scored on the same images
    assert set(train10) < set(train20) and not set(train20) & set(test)
    assert np.bincount(labels[train10]).tolist() == [10] * 4 and np.bincount(labels[test]).tolist() == [5] * 4
    assert small_data.sample_split(labels, 10, 5, seed=2)[1] != test
    with pytest.raises(ValueError, match="fewer than 5 test"):
        small_data.sample_split(labels, 26, 5, seed=1)


def test_digits_become_class_folders_of_upscaled_pngs(tmp_path):
    pytest.importorskip("sklearn")
    from PIL import Image

    from vitclassifier.data.folders import load_splits
    train, test = small_data.make_small_set("digits", tmp_path, per_class=3, seed=0, size=24,
                                            test_per_class=2)
    labels, samples, val = load_splits(train, 0.2, 0)  # as train.py reads it
    assert labels == [str(d) for d in range(10)] and len(samples) + len(val) == 30
    assert sorted(p.parent.name for p in test.glob("*/*.png")) == sorted([str(d) for d in range(10)] * 2)
    names = {p.name for p in train.glob("*/*.png")}
    assert not names & {p.name for p in test.glob("*/*.png")}  # no image in both
    with Image.open(next(train.glob("7/*.png"))) as image:
        assert image.size == (24, 24) and image.mode == "L"
        assert np.asarray(image).max() > 128  # the digit's strokes survived the scaling


def test_the_grid_search_keeps_the_setting_best_on_validation_and_names_the_oracle():
    settings = small_data.grid()
    assert len(settings) == 12 and ["--lr", "2e-4", "--epochs", "20", "--no-flip"] in settings
    runs = [{"case": "digits:transfer", "per_class": 50, "seed": 0, "recipe": "grid", "setting": setting,
             "val_acc": val, "test_acc": test} for setting, val, test in (("a", 0.9, 0.5), ("b", 0.7, 0.8))]
    by_val, oracle = small_data.best_of_grid(runs + [{**runs[0], "recipe": "fixed"}])
    assert (by_val["recipe"], by_val["setting"]) == ("grid, best by val", "a")
    assert (oracle["recipe"], oracle["setting"]) == ("grid, best on test", "b")
