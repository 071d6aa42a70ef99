"""The user's docs stay connected: every relative link in README.md and docs/*.md reaches a file that
exists and, where it names a heading (#anchor), a heading of that file, as GitHub renders it. A page
moved or a heading renamed without its links fails here, naming the link. Every option of every
command is documented, and the documented resume rules are the code's."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from helpers import ROOT

import predict
import train
from vitclassifier.training.resume import RESUME_FREE

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a Markdown file; repeated headings get -1, -2, … as on GitHub."""
    seen: dict[str, int] = {}
    found = set()
    for line in FENCE.sub("", path.read_text(encoding="utf-8")).splitlines():
        heading = re.match(r"#{1,6}\s+(.*)", line)
        if heading:
            base = slug(heading.group(1))
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
    return found


def relative_links(path: Path) -> list[str]:
    """The links of a Markdown file that point inside the repository (code blocks left out)."""
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    targets = [first or second for first, second in LINK.findall(text)]
    return [target for target in targets if not re.match(r"[a-z]+:", target)]


def broken(path: Path, target: str) -> str | None:
    """Why a link does not resolve, or None when it does."""
    file_part, _, anchor = target.partition("#")
    linked = (path.parent / file_part).resolve() if file_part else path
    if not linked.exists():
        return f"no file {file_part}"
    if anchor and linked.suffix == ".md" and anchor not in anchors(linked):
        return f"no heading #{anchor} in {file_part or path.name}"
    return None


@pytest.mark.parametrize("path", DOCS, ids=lambda path: path.relative_to(ROOT).as_posix())
def test_every_relative_link_reaches_a_file_and_heading(path):
    problems = {target: broken(path, target) for target in relative_links(path)}
    assert {target: why for target, why in problems.items() if why} == {}


def test_the_link_checker_sees_a_broken_link_and_a_missing_heading(tmp_path):
    (tmp_path / "other.md").write_text("# A heading (`with code`)\n## Same\n## Same\n")
    page = tmp_path / "page.md"
    page.write_text("[ok](other.md#a-heading-with-code) [dup](other.md#same-1) [gone](missing.md)\n"
                    "[bad](other.md#nowhere) ![pic](other.md) [web](https://example.com/x.md)\n"
                    "```\n[in code](nowhere.md)\n```\n")
    found = {target: broken(page, target) for target in relative_links(page)}
    assert found == {"other.md#a-heading-with-code": None, "other.md#same-1": None, "other.md": None,
                     "missing.md": "no file missing.md",
                     "other.md#nowhere": "no heading #nowhere in other.md"}


def command_options(capsys) -> dict[str, set[str]]:
    """The long options each command's --help lists."""
    import app
    import classifier
    import export
    options = {}
    commands = {"train.py": train.main, "predict.py": predict.main, "export.py": export.main,
                "app.py": app.parse_args, "classifier.py": classifier.main}
    for name, show_help in commands.items():
        with pytest.raises(SystemExit):
            show_help(["--help"])
        listed = re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", capsys.readouterr().out)
        options[name] = set(listed) - {"--help"}
    return options


def test_every_option_of_every_command_is_documented(capsys):
    docs = "\n".join(path.read_text() for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))])
    undocumented = {name: sorted(option for option in options if f"`{option}" not in docs)
                    for name, options in command_options(capsys).items()}
    assert undocumented == {name: [] for name in undocumented}


def test_the_documented_options_that_may_change_on_resume_are_the_code_s():
    text = " ".join((ROOT / "docs" / "safety.md").read_text().split())
    listed = text.split("(`RESUME_FREE` in `training/resume.py`):")[1].split(".")[0]
    in_code = {f"--{name.replace('_', '-')}" for name in RESUME_FREE}
    assert set(re.findall(r"`(--[a-z-]+)`", listed)) == in_code

