"""Several labels per image (issue 30): label files whose label cell holds a set (``cat;dog``, or a JSON
list in JSONL), the wide form with one 0/1 column per class, an empty cell for "none of these"; the
split stratified over label sets (iterative stratification, Sechidis et al. 2011), and the counts
``--check-data`` reports.

A multi-label sample is ``(path, multi-hot tuple)``: one 0/1 per class of the sorted label map, so the
loader's collate stacks a batch's targets into a (batch, classes) tensor, and everything that only
carries samples along (the cache, --exclude, the fingerprint, resume) takes them unchanged.
"""
from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

from vitclassifier.data.audit import audit_dataset
from vitclassifier.data.folders import utf8_safe
from vitclassifier.data.labelfile import (
    IMAGE_COLUMNS,
    LABEL_COLUMNS,
    SPLIT_COLUMNS,
    TRAIN_VALUES,
    VAL_VALUES,
    _warn_missing,
    find_column,
    pick_columns,
    read_rows,
    resolve_image,
)
from vitclassifier.errors import UserError
from vitclassifier.text import printable

NO_LABEL = "(none)"  # the label set of an image with no label, as the counts name it
WIDE_VALUES = {"0", "1", "0.0", "1.0", "", "true", "false"}


def split_cell(value: str, separator: str) -> list[str]:
    """The labels of one cell: a JSON list (JSONL's ``["cat", "dog"]``), else text split at the separator;
    empty: no label."""
    value = value.strip()
    if value.startswith("["):
        try:
            items = json.loads(value)
        except ValueError:
            items = None
        if isinstance(items, list):
            return sorted({utf8_safe(str(item)).strip() for item in items} - {""})
    return sorted({utf8_safe(part).strip() for part in value.split(separator)} - {""})


def wide_columns(columns: list[str], rows: list[dict], image: str | None) -> list[str]:
    """The 0/1 class columns of the wide form (one column per class), or [] when the file is not so (a
    file with a label column by name keeps it, whatever 0/1 columns it also has)."""
    if {c.lower() for c in columns} & {c.lower() for c in LABEL_COLUMNS}:
        return []
    known = {c.lower() for c in (*LABEL_COLUMNS, *SPLIT_COLUMNS, *IMAGE_COLUMNS)}
    candidates = [c for c in columns if c != image and c.lower() not in known]
    wide = [c for c in candidates if all(row.get(c, "").strip().lower() in WIDE_VALUES for row in rows)]
    return wide if len(wide) >= 2 and len(wide) == len(candidates) else []


def detect_task(path: Path, task: str, separator: str, image_column: str | None = None,
                label_column: str | None = None) -> str:
    """``--task auto``: multi-label when the file is in the wide form, or a label cell holds a JSON list or
    the separator; else single-label. A named task is returned as it is."""
    if task != "auto":
        return task
    columns, rows = read_rows(path)
    if not rows:
        return "single-label"
    image = find_column(columns, image_column, IMAGE_COLUMNS, "--image-column", path)
    if label_column is None and image is not None and wide_columns(columns, rows, image):
        return "multi-label"
    label = pick_columns(columns, path, image_column, label_column)[1]
    cells = (row.get(label, "").strip() for row in rows)
    return "multi-label" if any(c.startswith("[") or separator in c for c in cells) else "single-label"


def read_multi_label_file(path: Path, separator: str, image_column: str | None = None,
                          label_column: str | None = None) -> tuple[list[str], dict[Path, list[str]], dict]:
    """(labels sorted, each existing image's label names, each image's split when there is a split column).
    Images without a label are kept ("none of these"); missing files are warned of and skipped."""
    columns, rows = read_rows(path)
    if not rows:
        raise UserError(f"label file {printable(str(path))} has no rows")
    image = find_column(columns, image_column, IMAGE_COLUMNS, "--image-column", path)
    wide = wide_columns(columns, rows, image) if label_column is None and image is not None else []
    label = None if wide else pick_columns(columns, path, image_column, label_column)[1]
    image = image or pick_columns(columns, path, image_column, label_column)[0]
    split_column = find_column(columns, None, SPLIT_COLUMNS, "", path)
    sets, splits, missing, outside, again = {}, {}, [], [], []
    for row in rows:
        name = row.get(image, "")
        if not name:
            continue
        found = resolve_image(path.parent, name)
        if found is not None and not found.resolve().is_relative_to(path.parent.resolve()):
            outside.append(name)
            continue
        if found is None:
            missing.append(name)
            continue
        names = ([c for c in wide if row.get(c, "").strip().lower() in {"1", "1.0", "true"}] if wide
                 else split_cell(row.get(label, ""), separator))
        if found in sets:
            again.append(name)
            continue
        sets[found] = names
        if split_column:
            splits[found] = row.get(split_column, "").lower()
    for names, what in ((missing, "do not exist and are skipped"), (outside, "lie outside its folder and are "
                        "skipped"), (again, "are listed again; their first row is used")):
        if names:
            _warn_missing(path, names, what)
    labels = sorted(set(wide) | {n for names in sets.values() for n in names})
    if len(labels) < 2:
        raise UserError(f"label file {printable(str(path))} names {len(labels)} label(s) on existing images; "
                        f"training needs at least two")
    return labels, sets, splits


def multi_hot(names: list[str], labels: list[str]) -> tuple[int, ...]:
    """One 0/1 per class of ``labels``."""
    chosen = set(names)
    return tuple(int(label in chosen) for label in labels)


def iterative_split(targets: list[tuple[int, ...]], val_split: float, seed: int) -> list[bool]:
    """Which samples go to validation: iterative stratification (Sechidis, Tsoumakas and Vlahavas 2011).
    The label with the fewest samples left is dealt first, each of its samples to the side that still
    wants most of that label, so rare labels reach validation in proportion; seeded, so reproducible."""
    order = list(range(len(targets)))
    random.Random(f"{seed}/multi-label").shuffle(order)
    wanted_total = [len(targets) * (1 - val_split), len(targets) * val_split]  # train, val
    classes = len(targets[0]) if targets else 0
    wanted = [[sum(t[c] for t in targets) * share for c in range(classes)] for share in (1 - val_split,
                                                                                          val_split)]
    side: dict[int, int] = {}
    left = {c: [i for i in order if targets[i][c]] for c in range(classes)}
    while any(left.values()):
        rarest = min((c for c in left if left[c]), key=lambda c: (len(left[c]), c))
        for i in left[rarest]:
            choice = max((0, 1), key=lambda s: (wanted[s][rarest], wanted_total[s], -s))
            side[i] = choice
            wanted_total[choice] -= 1
            for c in range(classes):
                wanted[choice][c] -= targets[i][c]
        taken = set(left[rarest])
        left = {c: [i for i in members if i not in taken] for c, members in left.items()}
    for i in order:  # images without a label: to the side that wants most images
        if i not in side:
            side[i] = max((0, 1), key=lambda s: (wanted_total[s], -s))
            wanted_total[side[i]] -= 1
    return [side[i] == 1 for i in range(len(targets))]


def load_multi_label_file(path: Path, val_split: float, seed: int, separator: str,
                          image_column: str | None = None, label_column: str | None = None
                          ) -> tuple[list[str], list, list]:
    """(labels, train, val) of a multi-label file: its split column when it has one, else the iterative
    stratified split. Samples are (path, multi-hot tuple), in the file's sorted order."""
    labels, sets, splits = read_multi_label_file(path, separator, image_column, label_column)
    samples = [(p, multi_hot(sets[p], labels)) for p in sorted(sets)]
    if splits:
        unknown = sorted(set(splits.values()) - TRAIN_VALUES - VAL_VALUES)
        if unknown:
            raise UserError(f"the split column of {printable(str(path))} has values other than train and "
                            f"val: {', '.join(map(printable, unknown[:5]))}")
        to_val = [splits[p] in VAL_VALUES for p, _ in samples]
    else:
        to_val = iterative_split([t for _, t in samples], val_split, seed)
    train = [s for s, v in zip(samples, to_val) if not v]
    val = [s for s, v in zip(samples, to_val) if v]
    if not train or not val:
        lacking = "training" if not train else "validation"
        raise UserError(f"{printable(str(path))}: the split leaves no {lacking} "
                        f"images; add images or mark some rows train and some val")
    return labels, train, val


def set_name(target: tuple[int, ...], labels: list[str], separator: str = ";") -> str:
    """A label set as text: ``cat;dog``, or NO_LABEL."""
    return separator.join(name for name, on in zip(labels, target) if on) or NO_LABEL


def label_counts(labels: list[str], train: list, val: list) -> dict:
    """Per label its positives in train and val; the images with no label; the label-set counts."""
    per_label = {name: {"train": sum(t[i] for _, t in train), "val": sum(t[i] for _, t in val)}
                 for i, name in enumerate(labels)}
    sets = Counter(set_name(t, labels) for _, t in (*train, *val))
    return {"labels": per_label, "no_label": sets.get(NO_LABEL, 0),
            "label_sets": dict(sorted(sets.items(), key=lambda kv: (-kv[1], kv[0])))}


def audit_multi_label(labels: list[str], train: list, val: list, **options) -> dict:
    """data/audit.py's audit of the samples relabelled by their label set (one "class" per distinct set):
    it counts label sets, and flags an image listed under two sets as contradictory; then what differs
    from one class per image: one label set alone is fine, imbalance is per label (counted here)."""
    names = sorted({set_name(t, labels) for _, t in (*train, *val)})
    index = {name: i for i, name in enumerate(names)}
    report = audit_dataset(names, [(p, index[set_name(t, labels)]) for p, t in train],
                           [(p, index[set_name(t, labels)]) for p, t in val], **options)
    report["fatal"] = [f for f in report["fatal"] if "class(es) with usable" not in f]
    report["recommendations"] = [r for r in report["recommendations"] if "imbalanced" not in r]
    report["imbalance_ratio"] = None
    report["multi_label"] = label_counts(labels, train, val)
    return report


def relabel(sets: dict[Path, list[str]], found: list[str], labels: list[str], where: str,
            model_path: Path) -> list:
    """Images' label names as multi-hot samples over the model's ``labels``; labels it lacks are refused."""
    if unknown := sorted(set(found) - set(labels)):
        raise UserError(f"the labels of {printable(where)} don't match the checkpoint {model_path}: not in "
                        f"the checkpoint: {', '.join(map(printable, unknown[:10]))}")
    return [(p, multi_hot(names, labels)) for p, names in sets.items()]


def relabel_hot(samples: list, found: list[str], labels: list[str], where: str, model_path: Path) -> list:
    """Multi-hot samples over ``found`` re-expressed over the model's ``labels`` (as relabel)."""
    named = {p: [name for name, on in zip(found, hot) if on] for p, hot in samples}
    return relabel(named, found, labels, where, model_path)
