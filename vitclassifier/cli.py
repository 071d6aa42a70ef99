"""What the commands share on their command lines: the help format, the device and precision choices,
and which options a user typed."""
from __future__ import annotations

import argparse

DEVICES = ["auto", "cpu", "cuda", "mps"]
PRECISIONS = ["auto", "fp32", "bf16", "fp16"]
PRECISION_HELP = "autocast precision; auto: bf16 where the device supports it, else fp16 on CUDA, else fp32"


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows "(default: X)" in --help, except for flags (``--no-calibrate``'s default True says nothing
    a user types) and options without a default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        flag = action.nargs == 0  # store_true, store_false, store_const: nothing follows the option
        if flag or action.default is None or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def new_parser(description: str) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(description=description, formatter_class=HelpFormatter)


def typed_options(parser: argparse.ArgumentParser, argv: list[str] | None,
                  parsed: argparse.Namespace) -> set[str]:
    """The destinations of the options given on the command line ``argv`` (``parsed`` is its
    result), as opposed to those left at their defaults.

    ``argv`` is parsed once more into a namespace whose every attribute is already set to a marker:
    argparse fills in defaults only where an attribute is missing, so what still holds the marker
    afterwards was not typed."""
    untouched = object()
    again = parser.parse_args(argv, namespace=argparse.Namespace(**dict.fromkeys(vars(parsed), untouched)))
    return {dest for dest, value in vars(again).items() if value is not untouched}
