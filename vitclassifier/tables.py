"""Every CSV file this tool writes goes through here, because people open them in spreadsheets.

A cell that starts with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return is a formula to
Excel, LibreOffice and Google Sheets: a class or file name such as ``=HYPERLINK(...)`` would run
when the audit's findings are reviewed. Such a text cell is written with a single quote in front
(OWASP's advice on CSV injection; the spreadsheet shows the name, not a formula). Numbers are left
as they are (``-0.5`` is a number, not a formula), and so is every cell that starts otherwise. A
cell that starts with a quote gets one more, so that ``original_cell`` gives back exactly what was
written. The JSON files written beside the CSV files keep the names as they are.
"""
from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from vitclassifier.files import atomic_write_text

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
QUOTE = "'"
NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")  # what we write for a value: -0.5, 1e-05


def safe_cell(value: object) -> object:
    """``value`` as a spreadsheet may show it without running it (see the module's docstring)."""
    if not isinstance(value, str):
        return value
    if value.startswith(QUOTE) or (value.startswith(FORMULA_STARTS) and not NUMBER.fullmatch(value)):
        return QUOTE + value
    return value


def original_cell(text: str) -> str:
    """What safe_cell was given, from what it wrote (to read our own CSV files back)."""
    return text[1:] if text.startswith(QUOTE) else text


def csv_text(rows: Iterable[Sequence[object]], lineterminator: str = "\r\n") -> str:
    """``rows`` (the header first) as CSV text, every cell through safe_cell."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator=lineterminator)
    writer.writerows([safe_cell(value) for value in row] for row in rows)
    return text.getvalue()


def dict_rows(columns: Sequence[str], rows: Iterable[Mapping[str, object]]) -> list[list[object]]:
    """The header and one list per dict, in the order of ``columns`` (missing values empty, others
    left out), as csv.DictWriter writes them."""
    return [list(columns), *([row.get(column, "") for column in columns] for row in rows)]


def write_csv(path: Path, rows: Iterable[Sequence[object]], lineterminator: str = "\r\n") -> None:
    """``rows`` (the header first) into ``path``, neutralised (csv_text) and written atomically."""
    atomic_write_text(Path(path), csv_text(rows, lineterminator))
