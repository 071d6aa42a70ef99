"""The deep data audit (``classifier.py --check-data DIR --model M``): what a model's eyes find wrong
in a data set, on top of data/audit.py's counts and byte-identical copies.

Every image is embedded once with the model's backbone (embedding.py; cached on disk by file content
and model, cache.py), then:
  * near-duplicates: pairs of images whose embeddings or colour thumbnails are nearly the same
    (neighbours.py), flagged when they leak across train/val or carry two labels;
  * suspected label errors: out-of-fold probabilities of a linear classifier on the embeddings,
    ranked by confident learning (cleanlab) (findings.py);
  * outliers: images far from their nearest neighbours, as the model sees them or as they look
    (findings.py).
run.py puts them together; outputs.py writes the CSV files, picture grids and the text report.
These are suspects for a person to review, never verdicts: nothing is moved or deleted.

The package sits on top of the library, beside evaluation.py: it loads models as inference does.
"""
