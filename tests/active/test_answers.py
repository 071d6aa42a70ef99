"""The review page's label file (active/answers.py): every answer kept across a killed writer, two
writers at once never corrupt it, and train.py's label-file reader takes it as it is."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import ROOT

from vitclassifier.active.answers import read_answers, save_answer
from vitclassifier.data.labelfile import read_label_file
from vitclassifier.errors import UserError

WRITER = """
import sys
from pathlib import Path
sys.path.insert(0, {root!r})
from vitclassifier.active.answers import save_answer
labels, name, count = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
for i in range(count if count >= 0 else 10**9):
    image = labels.parent / "images" / f"{{name}}_{{i % 1000}}.png"
    save_answer(labels, image, "even" if i % 2 == 0 else "odd")
    if count >= 0 and i % 4 == 0:  # a change of mind: the whole file is written anew
        save_answer(labels, labels.parent / "images" / f"{{name}}_{{i}}.png", "odd")
"""


def writer(labels: Path, name: str, count: int) -> subprocess.Popen:
    code = WRITER.format(root=str(ROOT))
    return subprocess.Popen([sys.executable, "-c", code, str(labels), name, str(count)])


def lines_of(labels: Path) -> list[list[str]]:
    return [line.split(",") for line in labels.read_text().splitlines()]


@pytest.mark.slow  # two processes
def test_two_writers_at_once_lose_nothing_and_never_mix_lines(tmp_path):
    labels = tmp_path / "labels.csv"
    first, second = writer(labels, "a", 60), writer(labels, "b", 60)
    assert first.wait(timeout=120) == 0 and second.wait(timeout=120) == 0
    rows = lines_of(labels)
    assert rows[0] == ["image", "label"] and all(len(row) == 2 for row in rows)
    answers = read_answers(labels)
    assert len(rows) - 1 == len(answers) == 120  # every answer once, none lost
    expected = {f"images/{name}_{i}.png": "odd" if i % 2 or i % 4 == 0 else "even"
                for name in "ab" for i in range(60)}
    assert answers == expected


@pytest.mark.slow  # a process killed
def test_a_killed_writer_leaves_every_finished_answer_and_a_readable_file(tmp_path):
    labels = tmp_path / "labels.csv"
    process = writer(labels, "k", -1)
    deadline = time.monotonic() + 60
    while not labels.exists() or labels.read_text().count("\n") < 30:
        assert time.monotonic() < deadline and process.poll() is None
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    answers = read_answers(labels)
    assert len(answers) >= 29 and all(len(row) == 2 for row in lines_of(labels)[:-1])
    # a line cut short (a crash mid-write) is never read, and dropped by the next answer
    with open(labels, "a") as handle:
        handle.write("images/torn.png,ev")
    assert read_answers(labels) == answers
    assert save_answer(labels, tmp_path / "images" / "next.png", "odd") == "added"
    assert read_answers(labels) == {**answers, "images/next.png": "odd"}
    assert all(len(row) == 2 for row in lines_of(labels))


def test_train_py_reads_the_file_and_a_changed_answer_replaces_the_old(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for name in ("x.png", "y.png", "z.png"):
        (images / name).write_bytes(b"")
    labels = tmp_path / "labels.csv"
    assert [save_answer(labels, images / "x.png", "cat"), save_answer(labels, images / "y.png", "dog"),
            save_answer(labels, images / "z.png", "cat"), save_answer(labels, images / "z.png", "dog"),
            save_answer(labels, images / "x.png", "cat")] == ["added", "added", "added", "changed",
                                                              "unchanged"]
    classes, _ = read_label_file(labels)
    assert classes == {"cat": [images / "x.png"], "dog": [images / "y.png", images / "z.png"]}


def test_a_label_file_with_other_columns_is_never_changed(tmp_path):
    labels = tmp_path / "theirs.csv"
    labels.write_text("filename,class,notes\na.png,cat,mine\n")
    with pytest.raises(UserError, match="did not write"):
        save_answer(labels, tmp_path / "b.png", "dog")
    assert labels.read_text() == "filename,class,notes\na.png,cat,mine\n"


def test_the_review_refuses_a_label_file_beside_the_images_train_py_would_not_find(tmp_path):
    from vitclassifier.active.review import Suggestion, check_labels_out
    (tmp_path / "images").mkdir()
    (tmp_path / "elsewhere").mkdir()
    found = [Suggestion(tmp_path / "images" / "a.png", "cat", "0.5", "")]
    with pytest.raises(UserError, match="only images inside the label file's folder"):
        check_labels_out(tmp_path / "elsewhere" / "labels.csv", found)
    check_labels_out(tmp_path / "labels.csv", found)  # above the images: fine
