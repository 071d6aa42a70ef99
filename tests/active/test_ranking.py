"""The ranking of --suggest-labels (active/ranking.py) on constructed embeddings: uncertain images
first, spread out, never two near-duplicates, nothing alike a labelled image."""
from __future__ import annotations

import numpy as np

from vitclassifier.active.ranking import View, nearest_similarity, select, uncertainty
from vitclassifier.deep_audit.embedding import unit_rows


def test_margin_and_entropy_rank_an_even_split_above_a_sure_answer():
    probabilities = np.array([[0.98, 0.01, 0.01], [0.5, 0.49, 0.01], [0.34, 0.33, 0.33]], np.float32)
    for how in ("margin", "entropy"):
        scores = uncertainty(probabilities, how)
        assert scores[0] < scores[1] <= scores[2] + 1e-6, how
        assert 0 <= scores.min() and scores.max() <= 1 + 1e-6
    assert np.isclose(uncertainty(probabilities, "margin")[1], 0.99)


def constructed():
    """Five variants (alike, but not near-duplicates) of one very uncertain image, two uncertain
    images far from it and from each other, a sure image, and an uncertain image almost equal to a
    labelled one."""
    rng = np.random.default_rng(0)
    confusing = np.array([1.0, 0, 0, 0]) + rng.normal(0, 0.1, (5, 4))
    others = np.array([[0, 1.0, 0, 0], [0, 0, 1.0, 0], [0, 0, 0, 1.0], [-1.0, 0.02, 0, 0]])
    candidates = unit_rows(np.vstack([confusing, others]).astype(np.float32))
    scores = np.array([0.95] * 5 + [0.8, 0.7, 0.05, 0.99], np.float32)
    labelled = unit_rows(np.array([[-1.0, 0.021, 0, 0]], np.float32))  # the last candidate's twin
    return candidates, scores, labelled


def test_uncertain_and_diverse_first_and_never_two_near_duplicates():
    candidates, scores, labelled = constructed()
    picks, duplicates = select(scores, View(candidates, labelled, 0.995), None, budget=4)
    chosen = [pick.index for pick in picks]
    assert duplicates == 1 and 8 not in chosen  # alike a labelled image: left out, however uncertain
    alike = candidates[:5] @ candidates[:5].T
    assert (alike[~np.eye(5, dtype=bool)] < 0.995).all() and (alike > 0.9).all()  # not duplicates
    assert chosen[0] in range(5)  # the most uncertain group first ...
    assert sum(index in range(5) for index in chosen) == 1  # ... and only one of its variants: diversity
    assert chosen[1:3] == [5, 6]  # then the uncertain ones far away, more uncertain first
    assert chosen[3] == 7  # the sure image only once nothing uncertain and new is left
    similarity = candidates[chosen] @ candidates[chosen].T
    assert (similarity[~np.eye(len(chosen), dtype=bool)] < 0.995).all()


def test_a_pixel_twin_is_left_out_even_when_the_embeddings_differ():
    candidates, scores, labelled = constructed()
    pixels = unit_rows(np.eye(9, dtype=np.float32))
    pixels[6] = pixels[5]  # candidates 5 and 6 look the same
    picks, _ = select(scores, View(candidates, labelled, 0.995),
                      View(pixels, np.zeros((0, 9), np.float32), 0.99), budget=9)
    chosen = [pick.index for pick in picks]
    assert 5 in chosen and 6 not in chosen and 8 not in chosen
    assert len(chosen) == 7  # the five variants, 5 and 7


def test_nearest_similarity_works_a_block_at_a_time(monkeypatch):
    rng = np.random.default_rng(1)
    unit, others = unit_rows(rng.normal(size=(50, 8))), unit_rows(rng.normal(size=(7, 8)))
    whole = (unit @ others.T).max(axis=1)
    monkeypatch.setattr("vitclassifier.active.ranking.BLOCK_ELEMENTS", 20)  # 2 rows per block
    assert np.allclose(nearest_similarity(unit, others), whole)
    assert (nearest_similarity(unit, others[:0]) == -1).all()
