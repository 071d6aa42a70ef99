"""Several labels per image (data/multilabel.py, data/scenes.py): every label-file form reads the same label
sets, the split is stratified over labels, --generate-data --multi-label is reproducible and --check-data
counts label sets."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

import classifier
from vitclassifier.data.multilabel import iterative_split, split_cell
from vitclassifier.data.sources import open_source
from vitclassifier.errors import UserError

SETS = {"a.png": ["cat", "dog"], "b.png": [], "c.png": ["dog"], "d.png": ["bird", "cat"], "e.png": ["cat"]}


def _images(folder: Path) -> Path:
    for name in SETS:
        Image.new("RGB", (8, 8), (len(name), 0, 0)).save(folder / name)
    return folder


def _read(path: Path, **options) -> dict[str, tuple]:
    source = open_source(path, val_split=0.4, seed=0, **options)
    assert source.task_line() == "multi-label"
    labels = source.labels
    return {p.name: tuple(name for name, on in zip(labels, hot) if on)
            for p, hot in (*source.train(), *source.val())}


def test_every_form_reads_the_same_label_sets(tmp_path: Path) -> None:
    folder = _images(tmp_path)
    rows = SETS.items()
    (folder / "semi.csv").write_text("image,labels\n" + "".join(f"{n},{';'.join(s)}\n" for n, s in rows))
    (folder / "bar.tsv").write_text("file\ttags\n" + "".join(f"{n}\t{'|'.join(s)}\n" for n, s in rows))
    (folder / "list.jsonl").write_text("".join(json.dumps({"image": n, "labels": s}) + "\n" for n, s in rows))
    names = ["bird", "cat", "dog"]
    (folder / "wide.csv").write_text("image," + ",".join(names) + "\n" + "".join(
        f"{n}," + ",".join(str(int(c in s)) for c in names) + "\n" for n, s in SETS.items()))
    expected = {n: tuple(sorted(s)) for n, s in SETS.items()}
    assert _read(folder / "semi.csv") == expected
    assert _read(folder / "bar.tsv", label_column="tags", separator="|") == expected
    assert _read(folder / "list.jsonl") == expected
    assert _read(folder / "wide.csv") == expected  # one 0/1 column per class, told from its values


def test_a_hugging_face_sequence_of_class_labels_reads_the_same_sets(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    names = ["cat", "dog", "bird"]
    features = datasets.Features({"image": datasets.Image(),
                                  "tags": datasets.Sequence(datasets.ClassLabel(names=names))})
    folder = _images(tmp_path)
    images = [{"bytes": (folder / name).read_bytes(), "path": None} for name in SETS]
    table = datasets.Dataset.from_dict({"image": images, "tags": [[names.index(n) for n in s]
                                                                  for s in SETS.values()]}, features=features)
    table.save_to_disk(str(tmp_path / "hf"))
    source = open_source(tmp_path / "hf", val_split=0.4, seed=0)
    assert source.task_line() == "multi-label" and source.labels == ["bird", "cat", "dog"]
    found = {ref.row: tuple(n for n, on in zip(source.labels, hot) if on)
             for ref, hot in (*source.train(), *source.val())}
    assert found == {row: tuple(sorted(s)) for row, s in enumerate(SETS.values())}
    assert len(source.val()) == 2  # iterative stratification: 40% of five images


def test_single_label_file_stays_single_label(tmp_path: Path) -> None:
    folder = _images(tmp_path)
    (folder / "one.csv").write_text("image,label,flag_a,flag_b\n" + "".join(  # 0/1 columns beside a label
        f"{n},{'x' if i % 2 else 'y'},{i % 2},0\n" for i, n in enumerate(SETS)))
    source = open_source(folder / "one.csv", val_split=0.4)
    assert source.task_line() == "single-label" and isinstance(source.train()[0][1], int)
    with pytest.raises(UserError, match="--task multi-label reads"):
        open_source(tmp_path, data_format="folder", task="multi-label").task_line()


def test_cells_and_the_rare_label_split() -> None:
    assert split_cell(' ["b", "a", "a"] ', ";") == ["a", "b"] and split_cell("x; y;", ";") == ["x", "y"]
    assert split_cell("", ";") == []
    # 100 images; label 2 is rare (5 images): iterative stratification sends about a fifth of every label
    # to validation, the rare one included, and the same seed gives the same split
    targets = [(i % 2, 1 - i % 2, int(i % 20 == 0)) for i in range(100)]
    to_val = iterative_split(targets, 0.2, seed=3)
    assert to_val == iterative_split(targets, 0.2, seed=3)
    assert sum(to_val) == 20
    for label in range(3):
        positives = [v for t, v in zip(targets, to_val) if t[label]]
        assert sum(positives) == round(len(positives) * 0.2), label


def test_generated_scenes_are_reproducible_and_counted(tmp_path: Path, capsys) -> None:
    argv = ["--generate-data", "--multi-label", "--per-class", "6", "--classes", "circle,star,cross",
            "--image-size", "32"]
    assert classifier.main([*argv, "--out", str(tmp_path / "a")]) == 0
    assert classifier.main([*argv, "--out", str(tmp_path / "b")]) == 0
    a, b = tmp_path / "a", tmp_path / "b"
    assert (a / "labels.csv").read_bytes() == (b / "labels.csv").read_bytes()
    assert all((a / "scenes" / p.name).read_bytes() == p.read_bytes() for p in (b / "scenes").iterdir())
    rows = [line.split(",") for line in (a / "labels.csv").read_text().splitlines()[1:]]
    assert len(rows) == 18 and all(len(cell.split(";")) <= 3 for _, cell in rows if cell)
    capsys.readouterr()
    assert classifier.main(["--check-data", str(a / "labels.csv"), "--json", "-"]) == 0
    report = json.loads(capsys.readouterr().out)
    empty = sum(1 for _, cell in rows if not cell)
    assert report["multi_label"]["no_label"] == empty
    assert sum(report["multi_label"]["label_sets"].values()) == 18
    (a / "labels.csv").write_text("mine\n")  # a file we did not write is never replaced
    assert classifier.main([*argv, "--out", str(a)]) == 2
