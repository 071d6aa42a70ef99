"""Label less, learn more (docs/active-learning.md): which unlabelled images to label next
(``classifier.py --suggest-labels``: suggest.py, from pool.py's one pass of the model and ranking.py's
uncertainty-weighted k-center greedy), the label file the review page (``app.py --review``:
review.py) appends each answer to (answers.py), and the history of rounds (rounds.py).

The package sits below the deep audit, whose embeddings, cache, near-duplicate test and picture
grids it reuses.
"""
