"""The deep audit from start to end: ``deep_audit(data, labels, train, val, options)``, ``options``
being classifier.py's ``CheckDataConfig`` (its --check-data --model options, checked there).

It returns the findings as plain data (for the JSON report), writes them into the output folder
(CSV files with paths relative to the data, picture grids, report.json by the caller) and
``format_findings`` gives the text report: counts and the top ten of each kind, introduced as what
they are: suspects to review, not verdicts.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from vitclassifier.data.exclude import sample_key
from vitclassifier.data.options import CheckDataConfig
from vitclassifier.deep_audit import outputs
from vitclassifier.deep_audit.cache import cached_embeddings
from vitclassifier.deep_audit.embedding import load_embedder, unit_rows
from vitclassifier.deep_audit.findings import label_issues, outlier_scores, outliers, require_libraries
from vitclassifier.deep_audit.neighbours import near_duplicates, nearest_neighbours, pixel_view
from vitclassifier.errors import UserError

NEIGHBOURS = 10  # nearest neighbours looked at per image (near-duplicates, pixel views)


def relative(sample, data: Path) -> str:
    """How a sample is named in the outputs: a file by its path relative to the data folder (or to
    a label file's folder), a dataset row as name[row]: exactly as train.py --exclude reads it."""
    return sample_key(sample, data if data.is_dir() else data.parent)


def _duplicate_rows(pairs, entries) -> list[dict]:
    """One row per pair; ``path`` is the copy to leave out (the validation one of a leak)."""
    rows = []
    for pair in pairs:
        keep, drop = entries[pair.first], entries[pair.second]
        if keep["split"] == "val" and drop["split"] == "train":
            keep, drop = drop, keep
        rows.append({"path": drop["path"], "duplicate_of": keep["path"], "split": drop["split"],
                     "other_split": keep["split"], "class": drop["class"], "other_class": keep["class"],
                     "cosine": round(pair.cosine, 4), "pixel_similarity": round(pair.pixel_similarity, 4),
                     "leak": keep["split"] != drop["split"], "contradictory": keep["class"] != drop["class"]})
    return rows


def find_all(embedded, entries: list[dict], given: np.ndarray, classes: list[str],
             options: CheckDataConfig) -> dict:
    """The three kinds of findings over the embedded images, as rows of plain data (and how long
    the neighbour search and the label-error search took)."""
    started = time.time()
    unit, pixels = unit_rows(embedded.vectors), pixel_view(embedded.thumbnails)
    neighbours = nearest_neighbours(unit, NEIGHBOURS)
    pixel_neighbours = nearest_neighbours(pixels, NEIGHBOURS)
    pairs = near_duplicates(unit, pixels, options.duplicate_threshold, options.pixel_threshold, neighbours,
                            pixel_neighbours)
    searched = time.time()
    issues = label_issues(embedded.vectors, given, len(classes), options.folds)
    scores = {"model": outlier_scores(neighbours), "pixels": outlier_scores(pixel_neighbours)}
    return {
        "step_seconds": {"neighbours": round(searched - started, 1),
                         "label_issues": round(time.time() - searched, 1)},
        "near_duplicates": _duplicate_rows(pairs, entries),
        "label_issues": [{**entries[issue.index], "given_label": classes[issue.given],
                          "suggested_label": classes[issue.suggested],
                          "label_quality": round(issue.quality, 4)} for issue in issues],
        "outliers": [{**entries[i], "outlier_score": round(z, 1), "view": view}
                     for i, z, view in outliers(scores)],
    }


def deep_audit(data: Path, labels: list[str], train: list, val: list, options: CheckDataConfig) -> dict:
    """Embed every image of the split (cached), find the suspects, write them into the output folder."""
    started = time.time()
    problems = options.problems()
    if problems:
        raise UserError("; ".join(problems))
    require_libraries()
    out = options.audit_out or outputs.default_folder(data)
    samples = [(sample, label, split) for split, part in (("train", train), ("val", val))
               for sample, label in part]
    outputs.claim_folder(out, data, [sample for sample, _, _ in samples])
    embedder = load_embedder(options.model, labels, options.device)
    embedded = cached_embeddings(embedder, [sample for sample, _, _ in samples], out, options.batch_size)
    embedding_seconds = time.time() - started
    if len(embedded.readable) < 2:
        raise UserError(f"the deep audit needs at least 2 readable images in {data}, found "
                        f"{len(embedded.readable)}")
    entries = [{"path": relative(samples[i][0], data), "split": samples[i][2], "class": labels[samples[i][1]]}
               for i in embedded.readable]
    given = np.array([samples[i][1] for i in embedded.readable])
    found = find_all(embedded, entries, given, labels, options)
    found["step_seconds"]["embedding"] = round(embedding_seconds, 1)  # with loading the model and hashing
    for kind in outputs.KINDS:
        outputs.write_csv(out / f"{kind}.csv", outputs.COLUMNS[kind], found[kind])
    write_pictures(out, found, {entry["path"]: samples[i][0] for entry, i in zip(entries, embedded.readable)})
    return {"model": options.model, "folder": str(out), "settings": settings(options, out),
            "image_size": embedder.prep.image_size,
            "images": len(embedded.readable), "from_cache": embedded.from_cache,
            "unreadable": len(embedded.unreadable), "seconds": round(time.time() - started, 1), **found}


def settings(options: CheckDataConfig, out: Path) -> dict:
    """The deep audit's settings, as report.json records them."""
    return {"model": options.model, "out": str(out), "folds": options.folds,
            "duplicate_threshold": options.duplicate_threshold, "pixel_threshold": options.pixel_threshold,
            "neighbours": NEIGHBOURS, "batch_size": options.batch_size, "device": options.device}


def write_pictures(out: Path, found: dict, sample_of: dict) -> None:
    """One picture grid per kind: the top suspects with what makes them suspect."""
    top = {kind: found[kind][:outputs.GRID_ITEMS] for kind in outputs.KINDS}

    def cell(paths: list[str], caption: str) -> tuple[list, str]:
        return [sample_of[path] for path in paths], caption

    short = outputs.short
    outputs.write_grid(out / "label_issues.png", [cell([row["path"]], (
        f"{short(row['path'])}\n{short(row['given_label'], 12)} -> {short(row['suggested_label'], 12)}"
        f"\nquality {row['label_quality']:.3f}")) for row in top["label_issues"]])
    outputs.write_grid(out / "near_duplicates.png", [cell([row["duplicate_of"], row["path"]], (
        f"{short(row['duplicate_of'], 20)} ~ {short(row['path'], 20)}\ncosine {row['cosine']:.3f}, "
        f"pixels {row['pixel_similarity']:.3f}"
        + (" LEAK" if row["leak"] else "") + (" CONTRADICTORY" if row["contradictory"] else "")))
        for row in top["near_duplicates"]])
    outputs.write_grid(out / "outliers.png", [cell([row["path"]], (
        f"{short(row['path'])}\n{short(row['class'], 20)}, {row['outlier_score']:.1f} spreads out "
        f"({row['view']})"))
        for row in top["outliers"]])
