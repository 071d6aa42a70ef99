"""Stratified k-fold splits (data/folds.py): disjoint validation parts covering every sample once, each
class spread evenly, seeded, and a class too small for K refused by name."""
from __future__ import annotations

from collections import Counter

import pytest

from vitclassifier.data.folds import check_fold_count, fold_of_each, stratified_folds
from vitclassifier.errors import UserError

COUNTS = {0: 23, 1: 10, 2: 7, 3: 5}  # uneven classes, none divisible by K


def samples() -> list[tuple[str, int]]:
    return [(f"c{label}/{i}.png", label) for label, count in COUNTS.items() for i in range(count)]


def test_validation_parts_are_disjoint_and_cover_every_sample_once():
    data = samples()
    folds = stratified_folds(data, 5, seed=0)
    assert len(folds) == 5
    seen = [sample for _, val in folds for sample in val]
    assert sorted(seen) == sorted(data)  # every sample validated exactly once
    for train, val in folds:
        assert not set(train) & set(val)
        assert sorted(train + val) == sorted(data)


@pytest.mark.parametrize("k", [2, 3, 5])
def test_each_class_and_each_fold_is_spread_as_evenly_as_possible(k):
    folds = stratified_folds(samples(), k, seed=3)
    sizes = [len(val) for _, val in folds]
    assert max(sizes) - min(sizes) <= 1
    for label, count in COUNTS.items():
        per_fold = [sum(1 for _, y in val if y == label) for _, val in folds]
        assert sorted(set(per_fold)) in ([count // k], [count // k, count // k + 1])
        assert sum(per_fold) == count


def test_seeded_same_seed_same_folds_other_seed_other_folds():
    labels = [label for _, label in samples()]
    assert fold_of_each(labels, 4, seed=7) == fold_of_each(labels, 4, seed=7)
    assert fold_of_each(labels, 4, seed=7) != fold_of_each(labels, 4, seed=8)
    assert Counter(zip(labels, fold_of_each(labels, 4, seed=7))) == Counter(
        zip(labels, fold_of_each(labels, 4, seed=8)))  # the same stratification, other members


def test_string_labels_work_too():
    folds = fold_of_each(["a", "b", "a", "b", "a", "b"], 3, seed=0)
    assert sorted(folds[0::2]) == [0, 1, 2] and sorted(folds[1::2]) == [0, 1, 2]


def test_a_class_smaller_than_k_is_refused_by_name_with_the_way_out():
    labels = [0] * 10 + [1] * 3 + [2] * 10
    with pytest.raises(UserError) as error:
        fold_of_each(labels, 5, seed=0, names=["cat", "dog\x1b[31m", "emu"])
    message = str(error.value)
    assert "'dog\\x1b[31m' has 3 image(s)" in message  # named, escaped, counted
    assert "--folds 3 or fewer" in message
    assert "cat" not in message


def test_a_single_image_class_cannot_be_cross_validated_at_all():
    with pytest.raises(UserError, match="needs 2 images"):
        check_fold_count([0, 0, 0, 1], 2, names=["many", "one"])


def test_fewer_than_two_folds_is_refused():
    with pytest.raises(UserError, match="at least 2 folds"):
        check_fold_count([0, 1, 0, 1], 1)
