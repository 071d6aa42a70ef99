"""The label file the review page writes: ``image,label`` rows, image paths relative to the file,
which is exactly what ``train.py --data labels.csv`` reads (data/labelfile.py).

Every answer is saved the moment it is given, so closing the page or killing the server loses at
most the answer being written. Writers (two tabs, two servers) take an exclusive lock on a
companion file (``labels.csv.lock``) first, so that one answer is written at a time:
  * a new image: one line appended with a single write and fsync'd;
  * an image answered before with another label: the file is written anew through a temporary name
    and os.replace (train.py would refuse one image with two labels); the same label again: nothing.
A line cut short by a crash (no line end) is dropped before the next answer is written. The cells
are written as they are, not neutralised for spreadsheets as our reports are (tables.py): this is
a data file that train.py reads, and a leading quote would change its names.
"""
from __future__ import annotations

import csv
import fcntl
import io
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from vitclassifier.errors import UserError
from vitclassifier.files import atomic_write_text, fsync_dir
from vitclassifier.text import printable

HEADER = ("image", "label")


def relative_name(image: Path, labels_file: Path) -> str:
    """How the label file names ``image``: relative to the file's folder, with forward slashes."""
    return Path(os.path.relpath(Path(image).absolute(), Path(labels_file).absolute().parent)).as_posix()


@contextmanager
def locked(labels_file: Path) -> Iterator[None]:
    """Hold the exclusive lock on ``labels_file``'s companion lock file."""
    lock = Path(f"{labels_file}.lock")
    with open(lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _text(labels_file: Path) -> str:
    try:
        return labels_file.read_text(encoding="utf-8")
    except FileNotFoundError:
        return ""


def _parsed(whole: str, labels_file: Path) -> dict[str, str]:
    """{image: label} of complete lines; UserError for a file whose header is not ours."""
    rows = list(csv.reader(io.StringIO(whole)))
    if rows and tuple(rows[0]) != HEADER:
        raise UserError(f"--labels-out {printable(labels_file)} is a file with other columns "
                        f"({printable(','.join(rows[0]))}) that the review page did not write; it is not "
                        f"changed: give a new file name")
    return {row[0]: row[1] for row in rows[1:] if len(row) >= 2 and row[0]}


def read_answers(labels_file: Path) -> dict[str, str]:
    """{image as the file names it: label} of the complete lines (the last answer wins)."""
    text = _text(Path(labels_file))
    return _parsed(text[:text.rfind("\n") + 1], Path(labels_file))


def _line(image: str, label: str) -> str:
    text = io.StringIO()
    csv.writer(text, lineterminator="\n").writerow([image, label])
    return text.getvalue()


def save_answer(labels_file: Path, image: Path, label: str) -> str:
    """Record ``label`` for ``image`` (see the module's docstring); what was done: "added",
    "changed" or "unchanged"."""
    labels_file = Path(labels_file)
    name = relative_name(image, labels_file)
    with locked(labels_file):
        raw = _text(labels_file)
        whole = raw[:raw.rfind("\n") + 1]
        answers = _parsed(whole, labels_file)
        if answers.get(name) == label:
            return "unchanged"
        if name in answers or not whole or whole != raw:  # a change, a new file, or a line cut short
            was = name in answers
            answers[name] = label
            atomic_write_text(labels_file, _line(*HEADER) + "".join(_line(*row) for row in answers.items()))
            return "changed" if was else "added"
        with open(labels_file, "a", encoding="utf-8") as handle:
            handle.write(_line(name, label))
            handle.flush()
            os.fsync(handle.fileno())
        return "added"


def ensure_folder(labels_file: Path) -> None:
    """Create the label file's folder (and make its entry durable) before the first answer."""
    folder = Path(labels_file).absolute().parent
    folder.mkdir(parents=True, exist_ok=True)
    fsync_dir(folder)
