"""A label file (CSV, TSV or JSON Lines) beside a folder of images: one row per image, a column
naming the file (relative to the label file) and a column naming its class, and optionally a
split column (train / val). Kaggle data sets and labelling tools export this form.

The samples are real files, as for class folders, so everything after the scan (decoding, the
cache, the audit, resume) is the folder's. Within each class the files are sorted, so that a label
file over the same images as a class folder gives the same seeded split.
"""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

from vitclassifier.data.folders import stratified_split, utf8_safe
from vitclassifier.data.images import IMAGE_EXTENSIONS
from vitclassifier.errors import UserError
from vitclassifier.text import printable

LABEL_FILE_SUFFIXES = (".csv", ".tsv", ".jsonl")
# Column names recognised without --image-column / --label-column, in order of preference.
IMAGE_COLUMNS = ("image", "filename", "file_name", "file", "path", "image_path", "filepath", "img",
                 "image_id", "fname", "id", "name")
LABEL_COLUMNS = ("label", "labels", "class", "class_name", "category", "target", "breed", "species", "y")
SPLIT_COLUMNS = ("split", "subset", "set", "fold")
TRAIN_VALUES, VAL_VALUES = {"train", "training"}, {"val", "valid", "validation"}
NAMED_MISSING = 5  # missing images named one by one; the rest are counted


def read_rows(path: Path) -> tuple[list[str], list[dict]]:
    """The columns and rows of a CSV, TSV or JSONL file, values as text."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise UserError(f"label file {printable(str(path))} is not UTF-8 text ({error.reason}): save it "
                        f"as UTF-8") from None
    if path.suffix.lower() == ".jsonl":
        rows = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except (ValueError, RecursionError) as error:  # not JSON, a 5000-digit number, nested deep
                reason = error.msg if isinstance(error, json.JSONDecodeError) else str(error).split(";")[0]
                raise UserError(f"label file {printable(str(path))}, line {number}: not JSON "
                                f"({printable(reason or 'nested too deep')})") from None
            if not isinstance(row, dict):
                raise UserError(f"label file {printable(str(path))}, line {number}: expected a JSON "
                                f"object per line")
            rows.append({str(k): "" if v is None else json.dumps(v) if isinstance(v, list) else str(v)
                         for k, v in row.items()})  # a list (several labels) stays JSON: data/multilabel.py
        columns = list(dict.fromkeys(key for row in rows for key in row))
        return columns, rows
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    reader = csv.DictReader(text.splitlines(keepends=True), delimiter=delimiter)
    rows = []
    try:
        for row in reader:
            rows.append({k: (v or "").strip() for k, v in row.items() if k is not None})
            if any("\n" in v for v in rows[-1].values()):  # a quote left open swallows the rows after it
                raise csv.Error("a quoted cell runs over several lines: a stray quote (\")?")
    except csv.Error as error:  # also a cell over csv.field_size_limit (128 KiB): one line, not a traceback
        raise UserError(f"label file {printable(str(path))}, line {reader.line_num}: {printable(str(error))}"
                        ) from None
    return [c for c in (reader.fieldnames or []) if c], rows


def find_column(columns: list[str], wanted: str | None, known: tuple[str, ...], option: str,
                where: str | Path) -> str | None:
    """The column named by ``option`` (refused when absent), else the first of ``known`` present.
    Label files and Hugging Face datasets (data/hfdata.py) both pick their columns so."""
    if wanted is not None:
        if wanted not in columns:
            raise UserError(f"{option} {printable(wanted)!r} is not a column of {printable(str(where))}; "
                            f"its columns are: "
                            f"{', '.join(map(printable, columns))}")
        return wanted
    lowered = {column.lower(): column for column in columns}
    return next((lowered[name] for name in known if name in lowered), None)


def pick_columns(columns: list[str], path: Path, image_column: str | None,
                 label_column: str | None) -> tuple[str, str, str | None]:
    """(image column, label column, split column or None), named or recognised by name; with two
    columns left unrecognised, the first is the image and the second the label."""
    split = find_column(columns, None, SPLIT_COLUMNS, "", path)
    image = find_column(columns, image_column, IMAGE_COLUMNS, "--image-column", path)
    label = find_column([c for c in columns if c != image], label_column, LABEL_COLUMNS, "--label-column",
                        path)
    rest = [c for c in columns if c not in (image, label, split)]
    if image is None and label is None and len(rest) == 2:
        image, label = rest
    elif image is None and label is not None and len(rest) == 1:
        image = rest[0]
    elif label is None and image is not None and len(rest) == 1:
        label = rest[0]
    if image is None or label is None:
        raise UserError(f"cannot tell which columns of {printable(str(path))} hold the image file and "
                        f"the label (columns: "
                        f"{', '.join(map(printable, columns)) or 'none'}): name them with "
                        f"--image-column and --label-column")
    return image, label, split


def resolve_image(base: Path, name: str) -> Path | None:
    """The image file a row names, relative to the label file's folder; a name without a suffix
    (Kaggle's ``image_id``) is tried with each image suffix. None: no such file."""
    path = base / name
    if path.is_file():
        return path
    if not path.suffix:
        return next((c for c in (path.with_name(path.name + s) for s in sorted(IMAGE_EXTENSIONS))
                     if c.is_file()), None)
    return None


def _warn_missing(path: Path, missing: list[str], what: str) -> None:
    named = ", ".join(printable(name) for name in missing[:NAMED_MISSING])
    more = f" and {len(missing) - NAMED_MISSING} more" if len(missing) > NAMED_MISSING else ""
    print(f"warning: {len(missing)} image(s) named in {printable(str(path))} {what}: {named}{more}",
          file=sys.stderr)


def read_label_file(path: Path, image_column: str | None = None, label_column: str | None = None
                    ) -> tuple[dict[str, list[Path]], dict[Path, str]]:
    """Each class's existing images (sorted), and each image's split when the file has a split column
    (else empty). Missing images are listed once and skipped; fewer than two classes is refused."""
    columns, rows = read_rows(path)
    if not rows:
        raise UserError(f"label file {printable(str(path))} has no rows")
    image, label, split_column = pick_columns(columns, path, image_column, label_column)
    classes: dict[str, set[Path]] = {}
    splits, missing, given, conflicting, unlabelled, outside = {}, [], {}, [], [], []
    for row in rows:
        name, value = row.get(image, ""), utf8_safe(row.get(label, ""))
        if not name:
            continue
        if not value or value == "-1":  # no label: the row is left out, and counted
            unlabelled.append(name)
            continue
        found = resolve_image(path.parent, name)
        if found is not None and not found.resolve().is_relative_to(path.parent.resolve()):
            outside.append(name)  # /etc/passwd, ../x, a link out: data stays inside its folder
            continue
        if found is None:
            missing.append(name)
            continue
        if given.setdefault(found, value) != value:  # one image, two labels: its first row decides
            conflicting.append(name)
            continue
        classes.setdefault(value, set()).add(found)
        if split_column:
            splits.setdefault(found, row.get(split_column, "").lower())
    if missing:
        _warn_missing(path, missing, "do not exist and are skipped")
    if unlabelled:
        _warn_missing(path, unlabelled, "have no label (empty or -1) and are skipped")
    if outside:
        _warn_missing(path, outside, "lie outside its folder (an absolute path, ../ or a link out) and are "
                      "skipped")
    if conflicting:
        _warn_missing(path, conflicting, "are listed again with another label; their first row is used")
    if len(classes) < 2:
        raise UserError(f"the label column {printable(label)!r} of {printable(str(path))} has "
                        f"{len(classes)} class(es) "
                        f"with existing images; training needs at least two")
    return {name: sorted(files) for name, files in sorted(classes.items())}, splits


def _split_refusal(path: Path, image_column: str | None, label_column: str | None, what: str) -> UserError:
    """A refusal of the split column that names it (a ``fold`` column is one too), read again only now."""
    column = pick_columns(read_rows(path)[0], path, image_column, label_column)[2]
    return UserError(f"the split column {printable(str(column))!r} of {printable(str(path))} {what}")


def load_label_file(path: Path, val_split: float, seed: int, image_column: str | None = None,
                    label_column: str | None = None) -> tuple[list[str], list, list]:
    """(labels, train samples, val samples) from a label file: its split column when it has one,
    else the folder's stratified, seeded split."""
    classes, splits = read_label_file(path, image_column, label_column)
    labels = sorted(classes)
    if not splits:
        return labels, *stratified_split(classes, val_split, seed)
    unknown = sorted(set(splits.values()) - TRAIN_VALUES - VAL_VALUES)
    if unknown:
        raise _split_refusal(path, image_column, label_column, f"has values other than train and val: "
                             f"{', '.join(map(printable, unknown[:5]))}")
    train = [(p, i) for i, name in enumerate(labels) for p in classes[name] if splits[p] in TRAIN_VALUES]
    val = [(p, i) for i, name in enumerate(labels) for p in classes[name] if splits[p] in VAL_VALUES]
    if not train or not val:
        lacking = "training" if not train else "validation"
        raise _split_refusal(path, image_column, label_column, f"leaves no {lacking} images; mark some "
                             f"rows train and some val")
    return labels, train, val
