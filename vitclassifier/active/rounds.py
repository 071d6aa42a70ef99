"""The history of rounds of labelling: each round's model, how many labels it was trained on, and
its validation accuracy with a 95 % interval, kept in the suggestions folder as rounds.csv and
drawn as accuracy against the number of labels (rounds.png).

A round is recorded when --suggest-labels runs with a model: its figures come from the model's
training_info.json (val_acc, val_images, train_images); a model already recorded (same folder,
same accuracy and counts) is not recorded twice.
"""
from __future__ import annotations

import csv
from pathlib import Path

from vitclassifier import tables
from vitclassifier.files import write_via_temp
from vitclassifier.reporting.intervals import accuracy_interval

CSV, PICTURE = "rounds.csv", "rounds.png"
COLUMNS = ("round", "labels", "train_images", "val_images", "accuracy", "low", "high", "labelled_images",
           "model")


def read_rounds(out: Path) -> list[dict]:
    """The rounds recorded in ``out`` so far (values as text)."""
    path = Path(out) / CSV
    if not path.is_file():
        return []
    with open(path, encoding="utf-8", newline="") as handle:
        return [{key: tables.original_cell(value or "") for key, value in row.items()}
                for row in csv.DictReader(handle)]


def round_row(model: Path, info: dict, labelled: int) -> dict | None:
    """This model's round, or None when its training_info.json has no validation accuracy."""
    if "val_acc" not in info or not info.get("val_images"):
        return None
    count, train = int(info["val_images"]), int(info.get("train_images", 0))
    interval = accuracy_interval(float(info["val_acc"]), count)
    return {"labels": train + count, "train_images": train, "val_images": count,
            "accuracy": round(interval.value, 4), "low": round(interval.low, 4),
            "high": round(interval.high, 4),
            "labelled_images": labelled, "model": str(Path(model).absolute())}


def record(out: Path, model: Path, info: dict, labelled: int) -> list[dict]:
    """Add this model's round to rounds.csv (unless recorded already), redraw rounds.png; all rounds."""
    history = read_rounds(out)
    row = round_row(model, info, labelled)
    same = ("model", "labels", "accuracy")
    known = any(all(str(old.get(key)) == str(row[key]) for key in same) for old in history) if row else True
    if not known:
        history.append({"round": len(history) + 1, **row})
        tables.write_csv(Path(out) / CSV, tables.dict_rows(COLUMNS, history), lineterminator="\n")
    if history:
        draw(Path(out) / PICTURE, history)
    return history


def draw(path: Path, history: list[dict]) -> None:
    """Accuracy against the number of labels, each round with its interval."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    labels = [int(row["labels"]) for row in history]
    accuracy = [float(row["accuracy"]) * 100 for row in history]
    below = [a - float(row["low"]) * 100 for a, row in zip(accuracy, history)]
    above = [float(row["high"]) * 100 - a for a, row in zip(accuracy, history)]
    figure, axes = plt.subplots(figsize=(6, 4), layout="constrained")
    axes.errorbar(labels, accuracy, yerr=[below, above], marker="o", capsize=4)
    for row, x, y in zip(history, labels, accuracy):
        axes.annotate(f"round {row['round']}", (x, y), textcoords="offset points", xytext=(4, 6), fontsize=8)
    axes.set_xlabel("labelled images (training + validation)")
    axes.set_ylabel("validation accuracy (%), 95 % interval")
    axes.set_title("Accuracy against the number of labels")
    axes.grid(alpha=0.3)
    try:
        write_via_temp(path, lambda tmp: figure.savefig(tmp, format="png", dpi=100))
    finally:
        plt.close(figure)


def format_rounds(history: list[dict]) -> list[str]:
    """The history as lines of the text report."""
    if not history:
        return ["No round recorded: the model's training_info.json has no validation accuracy."]
    return ["Rounds so far (validation accuracy, 95 % interval):"] + [
        f"  round {row['round']}: {row['labels']} labels, {float(row['accuracy']) * 100:.1f}% "
        f"({float(row['low']) * 100:.1f}-{float(row['high']) * 100:.1f}%)" for row in history]
