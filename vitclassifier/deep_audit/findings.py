"""Suspected label errors and outliers, from the embeddings.

Label errors: a linear classifier (scikit-learn's logistic regression) is fitted on the embeddings
k times, each time predicting the fold it did not see, so every image gets probabilities from a
model that never saw its label. Confident learning (cleanlab.filter.find_label_issues, the field's
standard) then picks the images whose given label those probabilities contradict beyond what the
estimated noise between the classes explains. The suggested label is the most probable class;
the score is cleanlab's label quality (self-confidence: the probability of the given label; low is
suspect). Under a minute for 100,000 images (docs/audit.md), not a fine-tune per fold.

Outliers: an image's score in a view is its mean cosine distance to its k nearest neighbours
there, in two views: the embeddings (nothing the model sees is like it) and the thumbnails
(nothing looks like it; a blank picture is like nothing). Images whose score in either view lies
far above that view's typical one (more than OUTLIER_SPREAD robust standard deviations above the
median) are reported, with the view and how far. With the model's view alone, a stray that the
model maps among a class is missed (docs/audit.md has the figures).
"""
from __future__ import annotations

import warnings
from typing import NamedTuple

import numpy as np

from vitclassifier.deep_audit.neighbours import Neighbours
from vitclassifier.errors import UserError

EXTRAS = "pip install -r requirements-extras.txt"
OUTLIER_SPREAD = 5.0  # robust standard deviations above the median (robust_z); see docs/audit.md
PROBE_ITERATIONS = 100  # lbfgs steps: bounds the probe's time; it need not be fitted to the last digit
PROBE_C = 0.1  # inverse L2 strength of the linear probe


class LabelIssue(NamedTuple):
    index: int
    given: int
    suggested: int
    quality: float  # cleanlab's label quality of the given label (0 to 1; low: suspect)


def require_libraries():
    """cleanlab and scikit-learn, or one line naming the pip command (checked before any work)."""
    try:
        import cleanlab.filter
        import cleanlab.rank
        import sklearn.linear_model
        import sklearn.model_selection
        import sklearn.preprocessing
    except ImportError as error:
        raise UserError(f"suspected label errors need cleanlab and scikit-learn ({error.name} is not "
                        f"installed): {EXTRAS}") from None
    return cleanlab, sklearn


def out_of_fold_probabilities(vectors: np.ndarray, labels: np.ndarray, classes: int, folds: int,
                              seed: int = 0) -> np.ndarray:
    """(N, classes) probabilities, each row from a linear classifier fitted without that image.
    Folds are stratified; a class with fewer images than folds lowers the fold count (at least 2)."""
    _, sklearn = require_libraries()
    present = np.bincount(labels, minlength=classes)
    folds = int(max(2, min(folds, present[present > 0].min())))
    probabilities = np.zeros((len(labels), classes), np.float64)
    splitter = sklearn.model_selection.StratifiedKFold(folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a class absent from one fold, an iteration cap reached
        for fitted, held_out in splitter.split(vectors, labels):
            scale = sklearn.preprocessing.StandardScaler().fit(vectors[fitted])
            probe = sklearn.linear_model.LogisticRegression(C=PROBE_C, max_iter=PROBE_ITERATIONS)
            probe.fit(scale.transform(vectors[fitted]), labels[fitted])
            found = probe.predict_proba(scale.transform(vectors[held_out]))
            probabilities[np.ix_(held_out, probe.classes_)] = found
    return probabilities


def label_issues(vectors: np.ndarray, labels: np.ndarray, classes: int, folds: int) -> list[LabelIssue]:
    """The suspected label errors, most suspect first."""
    cleanlab, _ = require_libraries()
    if len(np.unique(labels)) < 2:
        return []
    probabilities = out_of_fold_probabilities(vectors, labels, classes, folds)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. a class cleanlab finds too small to estimate noise for
        ranked = cleanlab.filter.find_label_issues(labels, probabilities, n_jobs=1,
                                                   return_indices_ranked_by="self_confidence")
        quality = cleanlab.rank.get_label_quality_scores(labels, probabilities)
    suggested = probabilities.argmax(axis=1)
    return [LabelIssue(int(i), int(labels[i]), int(suggested[i]), float(quality[i])) for i in ranked]


def outlier_scores(neighbours: Neighbours) -> np.ndarray:
    """Mean cosine distance of each image to its nearest neighbours (0: like its neighbours)."""
    if neighbours.similarities.shape[1] == 0:
        return np.zeros(len(neighbours.similarities), np.float32)
    return 1.0 - neighbours.similarities.mean(axis=1)


def robust_z(scores: np.ndarray) -> np.ndarray:
    """How many robust standard deviations (1.4826 x the median absolute deviation) each score
    lies above the median: a few far-out images cannot hide themselves by widening the spread."""
    median = float(np.median(scores))
    spread = 1.4826 * float(np.median(np.abs(scores - median)))
    return (scores - median) / max(spread, 1e-6)


def outliers(views: dict[str, np.ndarray]) -> list[tuple[int, float, str]]:
    """(image, robust z, view) of the images whose score in any view ({view: scores}) lies more
    than OUTLIER_SPREAD robust standard deviations above that view's median, most outlying first."""
    found: dict[int, tuple[float, str]] = {}
    for view, scores in views.items():
        if len(scores) < 3:
            continue
        z = robust_z(scores)
        for i in np.flatnonzero(z > OUTLIER_SPREAD):
            if z[i] > found.get(int(i), (-np.inf, ""))[0]:
                found[int(i)] = (float(z[i]), view)
    return sorted(((i, z, view) for i, (z, view) in found.items()), key=lambda item: (-item[1], item[0]))
