"""Stratified k-fold splits for ``train.py --folds K``: on a small set one validation split of a few dozen
images says little, so every image is validated once, in one of K folds, by a model trained on the rest.

Each class is shuffled (seeded) and dealt round the folds like cards, the deal carrying on from one
class to the next: a class of n images puts n // K or n // K + 1 into each fold, and the folds' sizes
differ by at most one. A class with fewer than K images is refused rather than left out of some folds:
its recall would be measured on fewer folds than the others', and a fold whose training part lacks the
class cannot learn it, so the figures across folds would not mean what they say.
"""
from __future__ import annotations

import random
from collections.abc import Hashable, Sequence
from typing import TypeVar

from vitclassifier.errors import UserError
from vitclassifier.text import printable

Sample = TypeVar("Sample")


def fold_of_each(labels: Sequence[Hashable], k: int, seed: int,
                 names: Sequence[str] | None = None) -> list[int]:
    """The validation fold (0 .. k-1) of each sample, given its label: stratified and seeded.
    ``names`` (class index -> name) only words the refusal of a class too small for K."""
    check_fold_count(labels, k, names)
    by_class: dict[Hashable, list[int]] = {}
    for index, label in enumerate(labels):
        by_class.setdefault(label, []).append(index)
    shuffle = random.Random(seed).shuffle
    folds, dealt = [0] * len(labels), 0
    for members in by_class.values():  # in order of first appearance: the same input, the same folds
        shuffle(members)
        for index in members:
            folds[index] = dealt % k
            dealt += 1
    return folds


def stratified_folds(samples: Sequence[tuple[Sample, Hashable]], k: int, seed: int,
                     names: Sequence[str] | None = None) -> list[tuple[list, list]]:
    """K (train, val) splits of ``samples`` ((sample, label) pairs, e.g. (path, class index)): the K
    validation parts are disjoint and together hold every sample once; each train part is the rest,
    in the input's order."""
    fold = fold_of_each([label for _, label in samples], k, seed, names)
    return [([s for s, f in zip(samples, fold) if f != part], [s for s, f in zip(samples, fold) if f == part])
            for part in range(k)]


def check_fold_count(labels: Sequence[Hashable], k: int, names: Sequence[str] | None = None) -> None:
    """Refuse a K the data cannot support: below 2, or above the image count of some class (named,
    with its count and the largest K that works). ``names`` turns class indices into class names."""
    if k < 2:
        raise UserError(f"--folds {k}: cross-validation needs at least 2 folds")
    counts: dict[Hashable, int] = {}
    for label in labels:
        counts[label] = counts.get(label, 0) + 1
    short = {label: count for label, count in counts.items() if count < k}
    if not short:
        return
    named = ", ".join(f"'{printable(names[label] if names else label)}' has {count}"
                      for label, count in sorted(short.items(), key=lambda item: item[1])[:5])
    smallest = min(counts.values())
    way_out = (f"use --folds {smallest} or fewer, or add images" if smallest >= 2
               else "add images to it: a class needs 2 images to be both trained on and validated")
    raise UserError(f"--folds {k}: every class needs at least {k} images, one per fold, but {named} "
                    f"image(s){' (and more)' if len(short) > 5 else ''}; {way_out}")
