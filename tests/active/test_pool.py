"""What --suggest-labels takes as its pool (active/pool.py): a folder, or a label file's rows with
an empty label, its labelled rows being labelled images; rows pointing outside its folder ignored."""
from __future__ import annotations

from pathlib import Path

from vitclassifier.active.pool import read_pool
from vitclassifier.data.options import CheckDataConfig


def test_a_label_file_pool_splits_into_unlabelled_and_labelled_rows(tmp_path):
    images = tmp_path / "data" / "images"
    images.mkdir(parents=True)
    for name in ("a.png", "b.png", "c.png", "d.png"):
        (images / name).write_bytes(b"")
    (tmp_path / "outside.png").write_bytes(b"")
    labels = tmp_path / "data" / "labels.csv"
    labels.write_text("image,label\nimages/a.png,cat\nimages/b.png,\nimages/c.png,-1\nimages/d.png,dog\n"
                      "../outside.png,\nimages/missing.png,\n")
    unlabelled, labelled = read_pool(labels, None, None)
    assert unlabelled == [images / "b.png", images / "c.png"]
    assert labelled == [images / "a.png", images / "d.png"]
    assert read_pool(images, None, None) == ([images / n for n in ("a.png", "b.png", "c.png", "d.png")], [])


def test_the_suggestion_options_need_suggest_labels():
    assert CheckDataConfig(check_data="x", labelled="y").problems() == [
        "--labelled and --suggest-out go with --suggest-labels POOL"]
    assert CheckDataConfig(suggest_labels=Path("x"), labelled="y").problems() == []
