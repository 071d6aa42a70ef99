"""The shape of the code, read with ``ast``: small files and functions, a library that never imports
the commands, no import cycles inside the library, and imports that follow the layers project.md
draws under "One import direction". Each failure names what to fix, by file and function."""
from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

from helpers import ROOT

PACKAGE = "vitclassifier"
COMMANDS = {"train", "predict", "classifier", "export", "app"}  # the scripts at the root
MAX_FILE_LINES = 400  # every .py file has fewer lines than this
MAX_FUNCTION_LINES = 60  # every function and method too, from its def line (decorators left out)
SKIPPED_DIRS = {".git", ".venv", "venv", "__pycache__"}
PICTURE_HEADING = "## One import direction"
SHARED_LINE = 0  # the picture's top layer: its modules may import each other (no cycles: checked below)
# vitclassifier/__init__.py names its public names as strings and imports them on first use (PEP 562):
# it imports nothing of ours when it runs, so it sits in no layer
LAYERLESS = {PACKAGE}


def python_files() -> list[Path]:
    """Every .py file of the repository (not inside .git or a virtual environment)."""
    return sorted(path for path in ROOT.rglob("*.py")
                  if not SKIPPED_DIRS & set(path.relative_to(ROOT).parts[:-1]))


@cache
def parsed(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def where(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def module_name(path: Path) -> str:
    """vitclassifier/x/y.py -> vitclassifier.x.y; a package's __init__.py -> the package."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def scoped_nodes(tree: ast.AST, scope: str = "<module>", prefix: str = ""):
    """(qualified name of the enclosing function or "<module>", node) for every node under ``tree``;
    methods are named Class.method, nested functions outer.inner."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield scope, node
            yield from scoped_nodes(node, prefix + node.name, prefix + node.name + ".")
        elif isinstance(node, ast.ClassDef):
            yield scope, node
            yield from scoped_nodes(node, scope, prefix + node.name + ".")
        else:
            yield scope, node
            yield from scoped_nodes(node, scope, prefix)


def functions(tree: ast.AST, prefix: str = ""):
    """(qualified name, node) of every function and method, nested ones included."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield prefix + node.name, node
            yield from functions(node, prefix + node.name + ".")
        else:
            yield from functions(node, prefix + node.name + "." if isinstance(node, ast.ClassDef) else prefix)


def imports(tree: ast.AST, module: str, is_package: bool = False):
    """(imported name, enclosing function or "<module>", line) of every import in ``tree``, the
    module ``module``, also those inside functions and importlib.import_module("x") calls.
    ``from X import a`` gives X.a (a submodule of X or a name in it); relative imports are resolved."""
    package = module if is_package else module.rpartition(".")[0]
    for scope, node in scoped_nodes(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, scope, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            for alias in node.names:
                yield f"{base}.{alias.name}" if base else alias.name, scope, node.lineno
        elif isinstance(node, ast.Call) and dynamic_import(node):
            yield dynamic_import(node), scope, node.lineno


def dynamic_import(call: ast.Call) -> str | None:
    """"x" for importlib.import_module("x") or __import__("x"), else None."""
    name = getattr(call.func, "attr", getattr(call.func, "id", None))
    if name in ("import_module", "__import__") and call.args and isinstance(call.args[0], ast.Constant):
        return call.args[0].value if isinstance(call.args[0].value, str) else None
    return None


def library_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted((ROOT / PACKAGE).rglob("*.py"))}


def library_imports(path: Path):
    return imports(parsed(path), module_name(path), path.name == "__init__.py")


def resolve(name: str, modules) -> str | None:
    """The library module that importing ``name`` runs: the longest prefix of it that is one."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in modules:
            return ".".join(parts[:end])
    return None


def import_graph() -> dict[str, dict[str, list[str]]]:
    """module -> {imported library module: ["file:function line N", ...]} over the whole package."""
    modules = library_modules()
    graph: dict[str, dict[str, list[str]]] = {module: {} for module in modules}
    for module, path in modules.items():
        for name, scope, line in library_imports(path):
            target = resolve(name, modules) if name.split(".")[0] == PACKAGE else None
            place = f"{where(path)}:{scope} line {line}"
            if target and target != module and place not in graph[module].get(target, []):
                graph[module].setdefault(target, []).append(place)
    return graph


def picture_layers(markdown: str, exists=None) -> list[list[str]]:
    """The layers of the picture under PICTURE_HEADING, top to bottom, each a list of its parts as
    written ("text", "data/", "evaluation.py"). A line's parts are its first words that name a module,
    a package or a command (``exists``); the rest of the line is a comment; lines of arrows are skipped."""
    exists = exists or names_something
    block = markdown.split(PICTURE_HEADING, 1)[1].split("```", 2)[1]
    layers = []
    for line in block.splitlines():
        parts = []
        for word in line.split():
            if not (re.fullmatch(r"[a-z_]+(/|\.py)?", word) and exists(word)):
                break
            parts.append(word)
        if parts:
            layers.append(parts)
    return layers


def names_something(part: str) -> bool:
    """Whether a part of the picture is a module or package of ours, or a command."""
    return any(name in library_modules() or (ROOT / f"{name}.py").is_file() for name in part_names(part))


def part_names(part: str) -> set[str]:
    """The module names a part of the picture stands for: "data/" and "text" the package's, "train.py"
    the command's or the package's module of that name."""
    name = part.removesuffix("/").removesuffix(".py")
    return {f"{PACKAGE}.{name}", name} if part.endswith(".py") else {f"{PACKAGE}.{name}"}


def place_in(module: str, layers: list[list[str]]) -> tuple[int, str] | None:
    """(layer number, counted from the top, and part) of ``module`` in ``layers``, or None."""
    for number, parts in enumerate(layers):
        for part in parts:
            if any(module == name or module.startswith(name + ".") for name in part_names(part)):
                return number, part
    return None


def imports_against_the_layers(graph: dict[str, dict[str, list[str]]], layers: list[list[str]]) -> list[str]:
    """Each import of ``graph`` that goes to a lower layer, or sideways to another part of its own
    layer (the shared line excepted), with where it is."""
    wrong = []
    for module, targets in sorted(graph.items()):
        for target, places in sorted(targets.items()):
            here, there = place_in(module, layers), place_in(target, layers)
            if here is None or there is None:
                continue  # test_every_module_is_in_a_layer_of_the_picture names it
            if there[0] > here[0] or (there[0] == here[0] != SHARED_LINE and there[1] != here[1]):
                wrong += [f"{module} ({here[1]}) imports {target} ({there[1]}) at {place}"
                          for place in places]
    return wrong


def the_picture() -> list[list[str]]:
    return picture_layers((ROOT / "project.md").read_text(encoding="utf-8"))


def find_cycles(graph: dict[str, dict]) -> list[list[str]]:
    """The cycles a depth-first search meets, one per back edge, each as [a, b, ..., a]."""
    state: dict[str, str] = {}  # "open" while on the search's stack, "done" after
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(module: str) -> None:
        state[module] = "open"
        stack.append(module)
        for target in sorted(graph.get(module, {})):
            if state.get(target) == "open":
                cycles.append(stack[stack.index(target):] + [target])
            elif target not in state:
                visit(target)
        stack.pop()
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module)
    return cycles


def test_every_file_is_under_the_line_limit():
    too_long = [f"{where(path)}: {count} lines" for path in python_files()
                if (count := len(path.read_text(encoding="utf-8").splitlines())) >= MAX_FILE_LINES]
    assert not too_long, f"split these files (under {MAX_FILE_LINES} lines each):\n" + "\n".join(too_long)


def test_every_function_is_under_the_line_limit():
    too_long = [f"{where(path)}:{name} ({node.end_lineno - node.lineno + 1} lines, from line {node.lineno})"
                for path in python_files() for name, node in functions(parsed(path))
                if node.end_lineno - node.lineno + 1 >= MAX_FUNCTION_LINES]
    assert not too_long, (f"shorten these functions (under {MAX_FUNCTION_LINES} lines each):\n"
                          + "\n".join(too_long))


def test_the_library_never_imports_a_command():
    offenders = [f"{where(path)}:{scope} line {line} imports {name}"
                 for path in library_modules().values() for name, scope, line in library_imports(path)
                 if name.split(".")[0] in COMMANDS]
    assert not offenders, (f"{PACKAGE}/ must not import the commands ({', '.join(sorted(COMMANDS))}); move "
                           f"what it needs into the package:\n" + "\n".join(offenders))


def test_the_library_has_no_import_cycles():
    graph = import_graph()
    cycles = find_cycles(graph)
    lines = []
    for cycle in cycles:
        lines.append(" -> ".join(cycle))
        lines += [f"    {a} imports {b} at {'; '.join(graph[a][b])}" for a, b in zip(cycle, cycle[1:])]
    assert not cycles, f"break these import cycles in {PACKAGE}/:\n" + "\n".join(lines)


def test_every_module_is_in_a_layer_of_the_picture():
    layers = the_picture()
    missing = [module for module in library_modules()
               if module not in LAYERLESS and place_in(module, layers) is None]
    assert not missing, (f"project.md's picture under {PICTURE_HEADING!r} must show every module of "
                         f"{PACKAGE}/ in a layer; add these (a shared module to the top line):\n"
                         + "\n".join(missing))
    assert {f"{command}.py" for command in COMMANDS} <= set(layers[-1]), "the commands: the last line"


def test_imports_follow_the_layers_of_the_picture():
    wrong = imports_against_the_layers(import_graph(), the_picture())
    assert not wrong, ("a module imports only from its own part and the layers above it in project.md's "
                       "picture (side-by-side parts never import each other):\n" + "\n".join(wrong))


def test_the_layer_check_sees_an_import_that_goes_down_or_sideways():
    fake = {"text", "errors", "data/", "model/", "reporting/", "train.py"}
    layers = picture_layers(f"{PICTURE_HEADING}\n\n```\ntext  errors    shared: a comment\n   ^\n"
                            "data/\nmodel/   reporting/     side by side\ntrain.py\n```\n", fake.__contains__)
    assert layers == [["text", "errors"], ["data/"], ["model/", "reporting/"], ["train.py"]]
    graph = {f"{PACKAGE}.errors": {f"{PACKAGE}.text": ["e"]},  # the shared line: allowed
             f"{PACKAGE}.model.vit": {f"{PACKAGE}.data.images": ["up"],
                                      f"{PACKAGE}.model.checkpoint": ["own part"]},
             f"{PACKAGE}.data.images": {f"{PACKAGE}.model.vit": ["down"]},
             f"{PACKAGE}.reporting.plots": {f"{PACKAGE}.model.vit": ["sideways"]}}
    wrong = imports_against_the_layers(graph, layers)
    assert [line.rsplit(" at ", 1)[1] for line in wrong] == ["down", "sideways"], wrong
    assert place_in("train", layers) == (3, "train.py") and place_in(f"{PACKAGE}.hub", layers) is None


def test_the_checks_find_what_they_look_for():
    """The helpers above see nested functions, methods, imports inside functions and relative
    imports, and the real tree: so a passing check means something."""
    tree = ast.parse("import os\nclass A:\n    def f(self):\n        from . import b\n"
                     "        def g():\n            from ..c import d as e\n            import train\n"
                     "        importlib.import_module('predict')\n        return g\n")
    assert [name for name, _ in functions(tree)] == ["A.f", "A.f.g"]
    assert list(imports(tree, "pkg.sub.mod")) == [("os", "<module>", 1), ("pkg.sub.b", "A.f", 4),
                                                  ("pkg.c.d", "A.f.g", 6), ("train", "A.f.g", 7),
                                                  ("predict", "A.f", 8)]
    assert find_cycles({"a": {"b": []}, "b": {"c": []}, "c": {"a": []}}) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b": []}, "b": {}}) == []
    assert ROOT / "train.py" in python_files() and f"{PACKAGE}.errors" in library_modules()
    assert sum(len(targets) for targets in import_graph().values()) > 20  # the package's imports were read
