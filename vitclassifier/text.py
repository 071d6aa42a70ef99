"""Names shown as text: file, class and folder names come from users' files, so every message, table
and suggested command shows them through these helpers (escaped, quoted, counted, cut short)."""
from __future__ import annotations

import shlex
import unicodedata
from pathlib import Path

# Unicode's bidirectional overrides and isolates reorder what a terminal shows (hidden text, swapped names)
BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
SHORT_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
FEW = 5  # how many names first_few shows before "… (N more)"


def printable(text: object) -> str:
    """``text`` safe to print on a terminal: control characters (C0, DEL, C1 with ESC and newline, line
    and paragraph separators, bidirectional overrides) written as Python escapes (``\\x1b``, ``\\n``,
    ``\\u202e``), so a class or file name can neither drive the terminal nor split a line. The rest
    is left as it is."""
    text = str(text)
    if text.isprintable() and not BIDI_CONTROLS.intersection(text):
        return text  # the common case, quickly
    return "".join(_escaped(char) for char in text)


def _escaped(char: str) -> str:
    if char in SHORT_ESCAPES:
        return SHORT_ESCAPES[char]
    if char in BIDI_CONTROLS or unicodedata.category(char) in ("Cc", "Zl", "Zp"):
        code = ord(char)
        return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
    return char


def shell_word(path: str | Path) -> str:
    """A path as it must be typed in a command we suggest: quoted when it holds spaces or characters the
    shell would read (shlex.quote), control characters escaped (printable), so it can be copied."""
    return printable(shlex.quote(str(path)))


def counted(count: int, noun: str) -> str:
    """``1 epoch``, ``5 epochs``: a count with its noun in the right number."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def first_few(names: list[str], limit: int = FEW) -> str:
    """``a, b, c, d, e, … (3 more)``: the first ``limit`` names of a list that may be long."""
    return ", ".join(names[:limit]) + (f", … ({len(names) - limit} more)" if len(names) > limit else "")
