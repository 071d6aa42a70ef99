"""Synthetic data (data/synthetic.py, classifier.py --generate-data): byte-identical for a seed, classes
that differ by shape, and never replacing files it did not write."""
from __future__ import annotations

import argparse
import filecmp

import numpy as np
import pytest
from helpers import leftovers, one_error_line
from PIL import Image

import classifier
from vitclassifier.data.synthetic import MARK, generate_data, parse_classes


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


def test_generate_data_never_replaces_files_it_did_not_write(tmp_path, capsys):
    (tmp_path / "sample.jpg").write_bytes(b"my holiday photo")
    argv = ["--generate-data", "--out", str(tmp_path / "data"), "--classes", "circle,star",
            "--per-class", "2", "--image-size", "16", "--samples-dir", str(tmp_path)]
    assert classifier.main(argv) == 2
    one_error_line(capsys.readouterr().err, "sample.jpg", "not written by --generate-data", "--samples-dir")
    assert (tmp_path / "sample.jpg").read_bytes() == b"my holiday photo"
    assert not (tmp_path / "data").exists() and not (tmp_path / "samples").exists()
    (tmp_path / "sample.jpg").unlink()
    assert classifier.main(argv) == 0 and classifier.main(argv) == 0  # ours are replaced
    capsys.readouterr()
    from PIL import Image
    assert Image.open(tmp_path / "sample.jpg").info["comment"] == MARK
    user_file = tmp_path / "data" / "star" / "star_0001.jpg"
    user_file.write_bytes(b"not ours")
    assert classifier.main(argv) == 2
    one_error_line(capsys.readouterr().err, "star_0001.jpg", "--out")
    assert user_file.read_bytes() == b"not ours" and leftovers(tmp_path) == []


def test_generate_data_keeps_look_alike_files_and_refuses_bad_folders(tmp_path, capsys):
    (tmp_path / "data" / "square").mkdir(parents=True)
    look_alike = tmp_path / "data" / "square" / "square_0000.jpg"  # named like ours, but the user's
    look_alike.write_bytes(b"a real square")
    generate_data(tmp_path / "data", ["circle", "star"], 2, 16, 0, tmp_path / "s")
    assert look_alike.read_bytes() == b"a real square"
    (tmp_path / "a-file").write_text("x")
    for option, value in (("--out", tmp_path / "a-file"), ("--samples-dir", tmp_path / "a-file" / "s")):
        assert classifier.main(["--generate-data", "--per-class", "2", "--image-size", "16",
                                "--out", str(tmp_path / "d"), "--samples-dir", str(tmp_path / "s2"),
                                option, str(value)]) == 2
        one_error_line(capsys.readouterr().err, option, "not a folder")
    assert not (tmp_path / "d").exists() and not (tmp_path / "s2").exists()

