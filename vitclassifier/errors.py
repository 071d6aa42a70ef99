"""The one kind of error users see as a single line, and the one way commands turn it into an exit code."""
from __future__ import annotations

import sys
from collections.abc import Callable

from vitclassifier.text import printable


class UserError(Exception):
    """A mistake the user can fix: printed as one line, no traceback."""


EXIT_USER_ERROR = 2  # as argparse uses for a bad command line


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
