"""Every command option declared once: a dataclass field whose metadata holds its flags, help text,
choices, bounds, metavar and --help group (``option``). From those fields one generator builds each
command's argparse parser (``build_parser``, in the spirit of transformers' HfArgumentParser), one
function checks values against them (``field_problems``), and ``reference`` writes the option
tables of docs/options.md (tests/shared/test_options.py checks that page against them).
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import types
import typing
from typing import Any

from vitclassifier.cli import new_parser

MAIN = "options"  # the --help group of options that name no group of their own
BOUNDS = ("at_least", "above", "at_most", "below")


def option(help: str, default: Any = dataclasses.MISSING, **spec: Any) -> Any:
    """A config field that is a command option. ``spec``: flags (default ``--dest``), dest (default the
    field's name), type (an argparse type, default from the annotation), action, choices, metavar,
    nargs, const, required, group (its --help section), exclusive (a mutually exclusive group's name),
    place (its rank in --help where fields of several sections interleave), the bounds at_least, above,
    at_most, below, problem (the sentence when a bound or choice is broken; ``{value}`` shows the value),
    resume ("free": may change when a run is resumed; "session": and is never taken from the save)."""
    if isinstance(default, list):  # a dataclass takes no mutable default: a fresh copy per instance
        return dataclasses.field(default_factory=lambda: list(default), metadata={"help": help, **spec})
    return dataclasses.field(default=default, metadata={"help": help, **spec})


def options_of(*kinds: type) -> list[tuple[dataclasses.Field, Any]]:
    """The option fields of these dataclasses (sections nested in them included) with their
    annotations, in --help order: by ``place`` where fields give one, else as declared."""
    found = []
    for kind in kinds:
        annotations = hints(kind)
        for f in dataclasses.fields(kind):
            if dataclasses.is_dataclass(annotations[f.name]):
                found += options_of(annotations[f.name])
            elif "help" in f.metadata:
                found.append((f, annotations[f.name]))
    return sorted(found, key=lambda pair: pair[0].metadata.get("place", math.inf))


def hints(kind: type) -> dict[str, Any]:
    """The evaluated annotations of a dataclass (typing.get_type_hints)."""
    return typing.get_type_hints(kind)


def dest(f: dataclasses.Field) -> str:
    """The command-line dest of a field: its name unless the option says otherwise."""
    return f.metadata.get("dest", f.name)


def flags(f: dataclasses.Field) -> tuple[str, ...]:
    return f.metadata.get("flags", ("--" + dest(f).replace("_", "-"),))


def default_of(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None if f.default is dataclasses.MISSING else f.default


def scalar(annotation: Any) -> Any:
    """``int | None`` -> int, ``list[Path] | None`` -> Path: the type of one value on the command line."""
    kinds = [k for k in typing.get_args(annotation) if k is not type(None)] or [annotation]
    inner = typing.get_args(kinds[0])
    return inner[0] if typing.get_origin(kinds[0]) is list else kinds[0]


def argparse_spec(f: dataclasses.Field, annotation: Any) -> dict[str, Any]:
    """The add_argument keywords of one option field."""
    spec = f.metadata
    kwargs = {"dest": dest(f), "help": spec["help"]}
    if spec.get("required"):
        kwargs["required"] = True
    else:
        kwargs["default"] = default_of(f)
    action = spec.get("action") or (annotation is bool and ("store_false" if f.default else "store_true"))
    if action:
        kwargs["action"] = action
    elif spec.get("type", scalar(annotation)) is not str:
        kwargs["type"] = spec.get("type", scalar(annotation))
    kwargs.update({key: spec[key] for key in ("choices", "metavar", "nargs", "const") if key in spec})
    return kwargs


def build_parser(description: str, *kinds: type) -> argparse.ArgumentParser:
    """The command's parser: one argument per option field of ``kinds``, in --help order, in the groups
    (and mutually exclusive groups) the fields name."""
    parser = new_parser(description)
    groups: dict[str, Any] = {MAIN: parser}
    for f, annotation in options_of(*kinds):
        group = f.metadata.get("group", MAIN)
        if group not in groups:
            groups[group] = parser.add_argument_group(group)
        container = groups[group]
        if "exclusive" in f.metadata:
            key = "exclusive " + f.metadata["exclusive"]
            if key not in groups:
                groups[key] = container.add_mutually_exclusive_group()
            container = groups[key]
        container.add_argument(*flags(f), **argparse_spec(f, annotation))
    return parser


# -- checking values against the fields ------------------------------------------------------------------
def matches(value: Any, annotation: Any) -> bool:
    """Whether ``value`` is of a field's type (``int``, ``float | None``, ``Path``, ``list[str]``); a
    bool is no number here, an int is a float."""
    if annotation is Any:
        return True
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return any(matches(value, kind) for kind in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    kind = typing.get_origin(annotation) or annotation
    if isinstance(value, bool):
        return kind is bool
    return isinstance(value, (int, float) if kind is float else kind)


def type_name(annotation: Any) -> str:
    """``int or None``: a field's type as a sentence names it."""
    kinds = typing.get_args(annotation) if typing.get_origin(annotation) in (typing.Union, types.UnionType) \
        else (annotation,)
    return " or ".join("None" if k is type(None) else getattr(k, "__name__", str(k)) for k in kinds)


def type_problems(config: Any) -> list[str]:
    """Options whose value is not of the field's type (e.g. restored from a damaged save)."""
    return [f"{flags(f)[0]} {str(value)[:40]!r} is not {type_name(annotation)}"
            for f, annotation, value in values_of(config) if not matches(value, annotation)]


def values_of(config: Any) -> list[tuple[dataclasses.Field, Any, Any]]:
    """(field, annotation, value) of every option of a config, sections included."""
    found = []
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            found += values_of(value)
        elif "help" in f.metadata:
            found.append((f, hints(type(config))[f.name], value))
    return found


def within(value: Any, spec: dict) -> bool:
    """Whether a number keeps the field's bounds (nan keeps none); None (unset) and text always do."""
    if value is None or isinstance(value, str) or not any(bound in spec for bound in BOUNDS):
        return True
    checks = {"at_least": lambda b: value >= b, "above": lambda b: value > b,
              "at_most": lambda b: value <= b, "below": lambda b: value < b}
    return all(checks[bound](spec[bound]) for bound in BOUNDS if bound in spec)


def bound_phrase(spec: dict) -> str:
    """``must be at least 1``, ``must be from 0 to 1``: the field's bounds in words."""
    low = ("from", spec["at_least"]) if "at_least" in spec else ("above", spec.get("above"))
    high = ("to", spec["at_most"]) if "at_most" in spec else ("below", spec.get("below"))
    if high[1] is None:
        return f"must be at least {low[1]:g}" if low[0] == "from" else f"must be above {low[1]:g}"
    return f"must be {low[0]} {low[1]:g} {high[0]} {high[1]:g}"


def field_problems(config: Any) -> list[str]:
    """The broken bounds and choices of a config's options in --help order, one sentence each naming
    the option (a sentence that several options share, once)."""
    problems = []
    for f, _, value in sorted(values_of(config), key=lambda found: found[0].metadata.get("place", math.inf)):
        spec = f.metadata
        chosen = value is None or "choices" not in spec or value in spec["choices"]
        if not (within(value, spec) and chosen):
            problem = spec.get("problem") or (
                f"{flags(f)[0]}: choose from {', '.join(spec['choices'])}" if not chosen else
                f"{flags(f)[0]} {bound_phrase(spec)}")
            problem = problem.format(value=value)  # a problem may show the value: "{value}"
            problems += [] if problem in problems else [problem]
    return problems


# -- docs/options.md's tables -------------------------------------------------------------------------------
def markdown_table(*kinds: type) -> str:
    """One Markdown table of a command's options: option, default, what it does."""
    rows = ["| option | default | what it does |", "| --- | --- | --- |"]
    for f, annotation in options_of(*kinds):
        default = default_of(f)
        if isinstance(default, list):
            default = ",".join(default)
        shown = "required" if f.metadata.get("required") else (
            "" if default is None or annotation is bool else f"`{default}`")
        text = " ".join(f.metadata["help"].split()).replace("|", "\\|")
        rows.append(f"| `{' / '.join(flags(f))}` | {shown} | {text} |")
    return "\n".join(rows)


def reference(commands: dict[str, tuple[type, ...]]) -> str:
    """docs/options.md's "Options reference": a table per command, from the fields of its configs."""
    return "\n\n".join(f"### {command}\n\n{markdown_table(*kinds)}" for command, kinds in commands.items())
