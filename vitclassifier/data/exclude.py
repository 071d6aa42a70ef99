"""``train.py --exclude FILE``: leave out the images a person reviewed and rejected.

FILE is plain text with one path per line (blank lines and lines starting with ``#`` are skipped),
or a CSV file with a ``path`` column, such as the deep audit's label_issues.csv, near_duplicates.csv
or outliers.csv (``classifier.py --check-data DIR --model M``). Paths are relative to --data (to the
label file's folder when --data is a label file); absolute paths inside it work too; a dataset row
is named as the audit names it, ``name[row]``. Entries that match no image are counted and named
in a warning, never ignored in silence.
"""
from __future__ import annotations

import csv
import hashlib
import io
import os
import sys
from pathlib import Path

from vitclassifier.data.folders import utf8_safe
from vitclassifier.errors import UserError
from vitclassifier.tables import original_cell
from vitclassifier.text import printable

CSV_SUFFIXES = (".csv", ".tsv")
NAMED = 3  # entries that matched nothing, named in the warning


def read_exclude_list(path: Path) -> list[str]:
    """The entries of an exclude file, as written (see the module's docstring)."""
    if not Path(path).is_file():
        problem = "does not exist" if not Path(path).exists() else "is not a file"
        raise UserError(f"--exclude {printable(path)} {problem}; give a text file with one path per line, or "
                        f"a CSV file with a path column such as the deep audit's label_issues.csv")
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"--exclude {printable(path)} cannot be read as UTF-8 text: {error}") from None
    first = text.splitlines()[0] if text.strip() else ""
    if Path(path).suffix.lower() in CSV_SUFFIXES:
        delimiter = "\t" if Path(path).suffix.lower() == ".tsv" else ","
        rows = list(csv.DictReader(io.StringIO(text), delimiter=delimiter))
        if "path" not in (rows[0].keys() if rows else next(csv.reader([first], delimiter=delimiter), [])):
            raise UserError(f"--exclude {printable(path)}: a CSV file needs a 'path' column (as the deep "
                            f"audit's label_issues.csv has), or give a text file with one path per line")
        paths = (original_cell(row.get("path") or "") for row in rows)  # as the audit named them
        return [path.strip() for path in paths if path.strip()]
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def sample_key(sample, base: Path) -> str:
    """How a sample is named in exclude files: its path relative to ``base``, or a row's name."""
    if isinstance(sample, (str, Path)):
        return utf8_safe(os.path.normpath(os.path.relpath(sample, base)))
    return utf8_safe(str(sample))


def _entry_key(entry: str, base: Path) -> str:
    if os.path.isabs(entry):
        entry = os.path.relpath(entry, base)
    return os.path.normpath(entry)


def apply_exclude(path: Path, data: Path, train: list, val: list, quiet: bool = False
                  ) -> tuple[list, list, dict]:
    """(train, val) without the images ``path`` lists, and a record of what was left out (for the
    checkpoint and for resume: its hash names exactly the images left out). Says how many matched,
    and warns about entries that matched nothing (``quiet``: not, as on other torchrun processes)."""
    entries = read_exclude_list(path)
    base = Path(data) if Path(data).is_dir() else Path(data).parent
    wanted = {_entry_key(entry, base) for entry in entries}
    kept, left_out = {}, set()
    for split, samples in (("train", train), ("val", val)):
        kept[split] = []
        for sample, label in samples:
            key = sample_key(sample, base)
            if key in wanted:
                left_out.add(key)
            else:
                kept[split].append((sample, label))
    unmatched = sorted(wanted - left_out)
    dropped = {split: len(samples) - len(kept[split]) for split, samples in (("train", train), ("val", val))}
    say = (lambda *args, **kwargs: None) if quiet else print
    say(f"--exclude {printable(path)}: left out {dropped['train']} training and {dropped['val']} "
          f"validation image(s), {len(left_out)} of the {len(wanted)} paths listed")
    if unmatched:
        shown = ", ".join(printable(entry) for entry in unmatched[:NAMED])
        say(f"warning: --exclude: {len(unmatched)} listed path(s) match no image of {printable(data)} "
              f"(e.g. {shown}); paths are relative to --data", file=sys.stderr)
    digest = hashlib.sha256("\n".join(sorted(left_out)).encode("utf-8", "surrogateescape")).hexdigest()
    record = {"file": str(path), "listed": len(wanted), "left_out": dropped, "sha256": digest}
    return kept["train"], kept["val"], record
