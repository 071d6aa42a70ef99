"""Which unlabelled images a label would teach the model most: uncertain ones, spread out.

Uncertainty comes from the calibrated probabilities (``uncertainty``): the margin between the two
most likely classes, or the entropy. Diversity comes from k-center greedy over the embeddings,
weighted by uncertainty (``select``): each pick is the candidate with the largest uncertainty times
cosine distance to everything labelled or picked so far, so N picks are not N copies of one
confusing image, and a picture far from every labelled one counts for more.

A candidate that is a near-duplicate of an image already labelled, or of one picked before it
(the deep audit's test: embeddings or 8x8 thumbnails at least as alike as the thresholds), is
never picked. Memory: the candidates' float32 arrays, two float32 numbers per candidate, and
one block of similarities at a time (no per-image Python objects).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

UNCERTAINTIES = ("margin", "entropy")
BLOCK_ELEMENTS = 1 << 24  # similarities held at once against the labelled images (64 MiB of float32)


def uncertainty(probabilities: np.ndarray, how: str = "margin") -> np.ndarray:
    """Per row of (N, C) probabilities, from 0 (sure) to 1 (no idea): 1 - (p1 - p2) for ``margin``,
    entropy / log(C) for ``entropy``."""
    if probabilities.shape[1] < 2:
        return np.zeros(len(probabilities), np.float32)
    if how == "entropy":
        p = np.clip(probabilities, 1e-12, 1)
        return (-(p * np.log(p)).sum(axis=1) / np.log(probabilities.shape[1])).astype(np.float32)
    top = np.partition(probabilities, -2, axis=1)[:, -2:]
    return (1 - (top[:, 1] - top[:, 0])).astype(np.float32)


def unit_in_place(vectors: np.ndarray) -> np.ndarray:
    """``vectors`` (float32) scaled to rows of length 1 without a second copy of the array."""
    norms = np.sqrt(np.einsum("ij,ij->i", vectors, vectors))[:, None]
    vectors /= np.maximum(norms, 1e-12)
    return vectors


def nearest_similarity(unit: np.ndarray, others: np.ndarray) -> np.ndarray:
    """Each row of ``unit``'s largest cosine similarity to a row of ``others`` (-1 when none), a
    block of rows at a time."""
    best = np.full(len(unit), -1.0, np.float32)
    if len(others) == 0 or len(unit) == 0:
        return best
    rows = max(1, BLOCK_ELEMENTS // len(others))
    for start in range(0, len(unit), rows):
        best[start:start + rows] = (unit[start:start + rows] @ others.T).max(axis=1)
    return best


class View(NamedTuple):
    """One way of comparing images: candidates' and labelled images' rows of length 1, and the
    cosine similarity from which two count as near-duplicates."""
    candidates: np.ndarray  # (N, D) float32
    labelled: np.ndarray  # (L, D) float32
    threshold: float


class Pick(NamedTuple):
    index: int  # row among the candidates
    uncertainty: float
    distance: float  # cosine distance to the nearest labelled or earlier pick (1 when nothing is)


def select(scores: np.ndarray, embeddings: View, pixels: View | None, budget: int) -> tuple[list[Pick], int]:
    """Up to ``budget`` picks by uncertainty-weighted k-center greedy over ``embeddings`` (see the
    module's docstring), and how many candidates were left out as near-duplicates of labelled images."""
    views = [view for view in (embeddings, pixels) if view is not None]
    alike = [nearest_similarity(view.candidates, view.labelled) for view in views]
    blocked = np.zeros(len(scores), bool)
    for view, similarity in zip(views, alike):
        blocked |= similarity >= view.threshold
    duplicates = int(blocked.sum())
    # distance to the nearest labelled image: 1 - cosine, at most 1 (nothing labelled: all 1)
    distance = np.minimum(1.0, 1.0 - alike[0])
    picks: list[Pick] = []
    weight = np.maximum(scores.astype(np.float32), 1e-6)  # sure images still spread the rest of the budget
    while len(picks) < budget and not blocked.all():
        value = np.where(blocked, -np.inf, weight * np.maximum(distance, 0))
        chosen = int(np.argmax(value))
        picks.append(Pick(chosen, float(scores[chosen]), float(distance[chosen])))
        blocked[chosen] = True
        for view in views:
            similarity = view.candidates @ view.candidates[chosen]
            blocked |= similarity >= view.threshold
            if view is embeddings:
                distance = np.minimum(distance, 1.0 - similarity)
    return picks, duplicates


def why(pick: Pick, how: str, first: str, second: str, margin: float) -> str:
    """The reason a pick was made, in words for the CSV file."""
    unsure = (f"unsure between {first} and {second} (margin {margin:.2f})" if how == "margin"
              else f"uncertain (normalised entropy {pick.uncertainty:.2f}; top {first}, then {second})")
    return f"{unsure}; cosine distance {pick.distance:.2f} to the nearest labelled or picked image"
