"""Class folders (data/folders.py): scanning, the stratified split, existing train/ and val/ folders, and
clear messages for folders that cannot be used."""
from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from vitclassifier.data.folders import list_images, load_splits, stratified_split
from vitclassifier.errors import UserError


def make_folder(root, counts: dict[str, int], ext=".png"):
    for name, count in counts.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            Image.new("RGB", (8, 8), (i, 0, 0)).save(root / name / f"img{i}{ext}")


def test_scan_finds_images_recursively_case_insensitively_and_skips_hidden(tmp_path):
    make_folder(tmp_path, {"b": 2, "a": 2})
    (tmp_path / "a" / "nested").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "a" / "nested" / "UPPER.JPG")
    Image.new("RGB", (8, 8)).save(tmp_path / "a" / ".hidden.png")
    (tmp_path / "a" / ".ipynb_checkpoints").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "a" / ".ipynb_checkpoints" / "x.png")
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    (tmp_path / ".DS_Store").write_bytes(b"\0")
    assert [p.name for p in list_images(tmp_path / "a")] == ["img0.png", "img1.png", "UPPER.JPG"]
    labels, train, val = load_splits(tmp_path, 0.5, seed=0)
    assert labels == ["a", "b"]  # sorted: the label map is stable
    assert len(train) + len(val) == 5


def test_stratified_split_keeps_class_balance_and_is_seeded(tmp_path):
    make_folder(tmp_path, {"cat": 50, "dog": 10, "emu": 20})
    labels, train, val = load_splits(tmp_path, 0.2, seed=7)
    val_counts = {labels[i]: sum(1 for _, label in val if label == i) for i in range(3)}
    assert val_counts == {"cat": 10, "dog": 2, "emu": 4}
    assert not {p for p, _ in train} & {p for p, _ in val}
    assert load_splits(tmp_path, 0.2, seed=7)[2] == val
    assert load_splits(tmp_path, 0.2, seed=8)[2] != val


def test_existing_train_and_val_folders_are_used(tmp_path):
    make_folder(tmp_path / "train", {"x": 4, "y": 3})
    make_folder(tmp_path / "validation", {"x": 1, "y": 2})
    labels, train, val = load_splits(tmp_path, 0.2, seed=0)
    assert labels == ["x", "y"] and len(train) == 7 and len(val) == 3


def test_folder_errors_are_clear(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_splits(tmp_path / "nope", 0.2, 0)
    make_folder(tmp_path, {"only": 3})
    with pytest.raises(UserError, match="at least two class"):
        load_splits(tmp_path, 0.2, 0)
    make_folder(tmp_path, {"single": 1})
    with pytest.raises(UserError, match="'single' has 1 image"):
        load_splits(tmp_path, 0.2, 0)


def test_a_data_file_and_many_tiny_classes_get_clear_messages(tmp_path):
    (tmp_path / "data.zip").write_bytes(b"PK")
    with pytest.raises(UserError, match="data.zip is a file, not a folder"):
        load_splits(tmp_path / "data.zip", 0.2, 0)
    classes = {f"c{i:03d}": [Path(f"c{i:03d}.jpg")] for i in range(500)}
    classes["big"] = [Path("a.jpg"), Path("b.jpg")]
    with pytest.raises(UserError) as raised:
        stratified_split(classes, 0.2, 0)
    message = str(raised.value)
    assert message.startswith("500 classes have fewer than 2 images: c000, c001,") and "(490 more)" in message
    assert "c499" not in message and len(message) < 300

