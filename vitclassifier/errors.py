"""The one kind of error users see as a single line, and the one way commands turn it into an exit code."""
from __future__ import annotations

import sys
import unicodedata
from collections.abc import Callable


class UserError(Exception):
    """A mistake the user can fix: printed as one line, no traceback."""


EXIT_USER_ERROR = 2  # as argparse uses for a bad command line
BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
SHORT_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def report_user_error(error: UserError) -> int:
    """Print ``error: ...`` on stderr; the exit code of a command that stops on it."""
    print(f"error: {printable(error)}", file=sys.stderr)  # names in it may come from files
    return EXIT_USER_ERROR


def exit_code_of(run: Callable[[], int]) -> int:
    """Call ``run``; a UserError becomes one ``error:`` line and exit code 2. Anything else is a bug
    and keeps its traceback."""
    try:
        return run()
    except UserError as error:
        return report_user_error(error)


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
