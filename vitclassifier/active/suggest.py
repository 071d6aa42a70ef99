"""``classifier.py --suggest-labels POOL --model best/ --budget N``: which images to label next.

The pool is scored by the model in one pass (pool.py), ranked (ranking.py), and written into the
output folder (``--suggest-out``, default ``POOL-suggestions`` beside the pool):
  * suggestions.csv: path (relative to the CSV file's folder), suggested label, its calibrated
    confidence, the uncertainty, the distance to the nearest labelled or picked image, and why it
    was picked, in the order of the picks (the most useful first);
  * suggestions.png: a contact sheet of the first picks, with their suggested labels;
  * suggestions.json: the model's classes and the run's figures, for the review page;
  * rounds.csv and rounds.png: the history of rounds (rounds.py).
The folder follows the deep audit's rules: never inside the pool or among the labelled images'
folders, a marker file says it is ours, and a folder without it that holds one of our names is
refused; every file is written through a temporary name and os.replace.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from vitclassifier import tables
from vitclassifier.active import rounds
from vitclassifier.active.pool import labelled_samples, read_pool, score_pool
from vitclassifier.active.ranking import View, select, uncertainty, unit_in_place, why
from vitclassifier.data.folders import folders_of
from vitclassifier.data.options import CheckDataConfig
from vitclassifier.deep_audit.cache import cached_embeddings
from vitclassifier.deep_audit.embedding import load_embedder, unit_rows
from vitclassifier.deep_audit.outputs import claim_marked, short, write_grid
from vitclassifier.errors import UserError
from vitclassifier.files import atomic_write_text, refuse_among_inputs, refuse_inside
from vitclassifier.model.checkpoint import is_complete_checkpoint, read_info

MARKER = ".vitclassifier-suggestions"
OUR_FILES = ("suggestions.csv", "suggestions.png", "suggestions.json", rounds.CSV, rounds.PICTURE)
COLUMNS = ("path", "suggested_label", "confidence", "uncertainty", "distance", "why")
SHOWN = 16  # picks on the contact sheet (the deep audit's grid)


def default_folder(pool: Path) -> Path:
    """Beside the pool: ``unlabelled`` -> ``unlabelled-suggestions`` (``a.csv`` -> ``a-suggestions``)."""
    pool = Path(pool).absolute()
    return pool.with_name(f"{pool.stem if pool.is_file() else pool.name}-suggestions")


def claim_folder(out: Path, pool: Path, inputs: list) -> None:
    """Check ``out`` before any work (see the module's docstring), then create it with our marker."""
    if pool.is_dir():
        refuse_inside(out, pool, "--suggest-out", "the pool folder")
    refuse_among_inputs(out, folders_of(inputs), "--suggest-out", "an image folder of the data")
    claim_marked(out, "--suggest-out", (MARKER, "python classifier.py --suggest-labels"), OUR_FILES,
                 "--suggest-labels")


def suggest(args: CheckDataConfig) -> dict:
    """Score the pool, rank it, write the outputs; a summary for the text report."""
    model = Path(args.model or "")
    if not (model.is_dir() and is_complete_checkpoint(model)):
        raise UserError(f"--suggest-labels needs --model: a trained checkpoint folder (checkpoints/best), "
                        f"whose calibrated confidences rank the pool; got {args.model or 'none'}")
    pool = Path(args.suggest_labels)
    unlabelled, labelled = read_pool(pool, args.image_column, args.label_column)
    labelled += labelled_samples(args.labelled, args.image_column, args.label_column)
    known = {Path(sample).resolve() for sample in labelled if isinstance(sample, (str, Path))}
    unlabelled = [path for path in unlabelled if path.resolve() not in known]  # answered in an earlier round
    if not unlabelled:
        raise UserError(f"--suggest-labels {pool}: no unlabelled images found")
    out = args.suggest_out or default_folder(pool)
    claim_folder(out, pool, [*unlabelled, *labelled])
    info = read_info(model)
    embedder = load_embedder(str(model), [], args.device)
    scored = score_pool(embedder, float(info.get("temperature", 1.0)), unlabelled, args.batch_size)
    seen = cached_embeddings(embedder, labelled, out, args.batch_size) if labelled else None
    labels = list(info.get("labels") or embedder.model.config.id2label.values())
    scores = uncertainty(scored.probabilities, args.uncertainty)
    known_vectors = seen.vectors if seen else np.zeros((0, scored.embeddings.shape[1]), np.float32)
    # thumbnails without pixel_view's blank mark: blank pictures are never near-duplicates (as in the audit)
    known_thumbs = seen.thumbnails if seen else np.zeros((0, scored.thumbnails.shape[1]), np.float32)
    picks, duplicates = select(
        scores, View(unit_in_place(scored.embeddings), unit_rows(known_vectors), args.duplicate_threshold),
        View(unit_in_place(scored.thumbnails), unit_rows(known_thumbs), args.pixel_threshold), args.budget)
    rows = suggestion_rows(picks, scored, labels, args.uncertainty, out)
    write_outputs(out, rows, [scored.paths[pick.index] for pick in picks], {
        "model": str(model), "classes": labels, "pool": str(pool.absolute()),
        "uncertainty": args.uncertainty, "pool_images": len(unlabelled),
        "unreadable": len(scored.unreadable), "labelled_images": len(labelled),
        "left_out_as_duplicates": duplicates, "suggested": len(rows)})
    history = rounds.record(out, model, info, len(labelled))
    return {"out": out, "rows": rows, "pool": len(unlabelled), "unreadable": len(scored.unreadable),
            "labelled": len(labelled), "duplicates": duplicates, "rounds": history}


def suggestion_rows(picks: list, scored, labels: list[str], how: str, out: Path) -> list[dict]:
    """One CSV row per pick, in the order picked."""
    rows = []
    for pick in picks:
        probabilities = scored.probabilities[pick.index]
        first, second = np.argsort(-probabilities)[:2] if len(labels) > 1 else (0, 0)
        margin = float(probabilities[first] - probabilities[second])
        rows.append({
            "path": Path(os.path.relpath(scored.paths[pick.index].absolute(), out.absolute())).as_posix(),
            "suggested_label": labels[first], "confidence": round(float(probabilities[first]), 4),
            "uncertainty": round(pick.uncertainty, 4), "distance": round(pick.distance, 4),
            "why": why(pick, how, labels[first], labels[second], margin)})
    return rows


def write_outputs(out: Path, rows: list[dict], paths: list[Path], facts: dict) -> None:
    """suggestions.csv, suggestions.json and the contact sheet suggestions.png."""
    tables.write_csv(out / "suggestions.csv", tables.dict_rows(COLUMNS, rows), lineterminator="\n")
    atomic_write_text(out / "suggestions.json", json.dumps(facts, indent=2) + "\n")
    write_grid(out / "suggestions.png", [
        ([path], f"{number}. {short(row['path'], 22)}\n{short(row['suggested_label'], 16)} "
                 f"{row['confidence'] * 100:.0f}%\nuncertainty {row['uncertainty']:.2f}")
        for number, (row, path) in enumerate(zip(rows[:SHOWN], paths), 1)])


def format_suggestions(summary: dict) -> list[str]:
    """The text report of --suggest-labels."""
    out, rows = summary["out"], summary["rows"]
    lines = [f"Suggested {len(rows)} of {summary['pool']} unlabelled image(s) to label next "
             f"({summary['unreadable']} unreadable, {summary['duplicates']} left out as near-duplicates of "
             f"the {summary['labelled']} labelled image(s)); the most useful first:"]
    lines += [f"  {row['path']}: {row['suggested_label']} {row['confidence'] * 100:.0f}% ({row['why']})"
              for row in rows[:10]]
    lines += [f"  ... and {len(rows) - 10} more (see suggestions.csv)"] if len(rows) > 10 else []
    lines += rounds.format_rounds(summary["rounds"])
    lines.append(f"Written to {out}: suggestions.csv, suggestions.png, rounds.csv, rounds.png. Review them "
                 f"with: python app.py --review {out / 'suggestions.csv'} --labels-out LABELS.csv")
    return lines
