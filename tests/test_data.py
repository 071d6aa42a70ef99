"""The data layer: synthetic data (data/synthetic.py and classifier.py --generate-data), folder scanning
and the stratified split (data/folders.py), and the shared preprocessing (data/transforms.py). The
training augmentation, batched on the device (data/augment.py), is tested in test_augment.py."""
from __future__ import annotations

import argparse
import filecmp

import numpy as np
import pytest
import torch
from PIL import Image

import classifier
from vitclassifier.data.folders import list_images, load_splits
from vitclassifier.data.synthetic import generate_data, parse_classes
from vitclassifier.data.transforms import Preprocessing, eval_transform
from vitclassifier.errors import UserError


def test_generation_is_byte_identical_for_a_seed_and_differs_across_seeds(tmp_path):
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        generate_data(tmp_path / name, ["circle", "star"], per_class=4, image_size=32, seed=seed,
                      samples_dir=tmp_path / f"{name}-samples")
    same = filecmp.dircmp(tmp_path / "a" / "star", tmp_path / "b" / "star")
    assert sorted(same.same_files) == [f"star_{i:04d}.jpg" for i in range(4)] and not same.diff_files
    first = "star/star_0000.jpg"
    assert (tmp_path / "a" / first).read_bytes() != (tmp_path / "c" / first).read_bytes()
    assert (tmp_path / "a-samples" / "sample.jpg").is_file()
    samples = sorted(p.name for p in (tmp_path / "a-samples" / "samples").iterdir())
    assert samples == ["circle.jpg", "star.jpg"]


def test_classes_differ_by_shape_not_colour(tmp_path):
    generate_data(tmp_path / "d", ["circle", "square"], per_class=20, image_size=32, seed=0,
                  samples_dir=tmp_path)
    mean_colour = {c: np.mean([np.asarray(Image.open(p)).reshape(-1, 3).mean(0)
                               for p in (tmp_path / "d" / c).iterdir()], 0)
                   for c in ("circle", "square")}
    spread = [np.asarray(Image.open(p)).reshape(-1, 3).mean(0) for p in (tmp_path / "d" / "circle").iterdir()]
    assert np.std(spread, axis=0).min() > 15  # colours vary a lot within a class ...
    assert np.abs(mean_colour["circle"] - mean_colour["square"]).max() < 40  # ... and not by class


def test_parse_classes_accepts_names_or_a_count_and_rejects_typos():
    assert parse_classes("star, circle") == ["star", "circle"]
    assert parse_classes("3") == ["circle", "square", "triangle"]
    for bad in ("circel,star", "star", "1", "star,star"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_classes(bad)


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


def test_eval_transform_matches_the_saved_image_processor(tmp_path):
    """transformers.pipeline preprocesses with the saved processor; it must equal our eval path."""
    from transformers import AutoImageProcessor
    prep = Preprocessing(48, 0.875, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3))
    prep.to_image_processor().save_pretrained(tmp_path)
    processor = AutoImageProcessor.from_pretrained(tmp_path)
    assert Preprocessing.from_image_processor(processor) == prep
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (70, 100, 3), dtype=np.uint8))
    ours = eval_transform(prep)(image)
    theirs = processor(image, return_tensors="pt")["pixel_values"][0]
    assert ours.shape == (3, 48, 48)
    assert torch.allclose(ours, theirs, atol=1e-5)


@pytest.mark.slow
def test_generate_data_command_line(tmp_path, capsys):
    code = classifier.main(["--generate-data", "--out", str(tmp_path / "d"), "--classes", "2",
                            "--per-class", "3", "--image-size", "24", "--samples-dir", str(tmp_path)])
    assert code == 0
    assert len(list((tmp_path / "d").rglob("*.jpg"))) == 6
    assert Image.open(tmp_path / "sample.jpg").size == (24, 24)


def test_regenerating_replaces_our_old_files_and_keeps_the_users(tmp_path):
    generate_data(tmp_path / "d", ["circle", "square"], per_class=3, image_size=24, seed=0,
                  samples_dir=tmp_path)
    (tmp_path / "d" / "square" / "my_photo.jpg").write_bytes(b"user data")
    generate_data(tmp_path / "d", ["circle", "star"], per_class=2, image_size=24, seed=0,
                  samples_dir=tmp_path)
    files = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.jpg"))
    assert files == ["d/circle/circle_0000.jpg", "d/circle/circle_0001.jpg", "d/square/my_photo.jpg",
                     "d/star/star_0000.jpg", "d/star/star_0001.jpg", "sample.jpg",
                     "samples/circle.jpg", "samples/star.jpg"]
