"""Hostile data files (issue 33): files a few bytes long that would make gigabytes, shards that hang
or end inside a header, label files that point out of their folder or break the parsers. Every case
is built here with Pillow, tarfile and gzip; every bound is tested at a small limit set through its
environment variable, so that no test allocates much."""
from __future__ import annotations

from pathlib import Path

from PIL import Image

from vitclassifier.data.augment import train_decode
from vitclassifier.data.dataset import ImageFolderDataset
from vitclassifier.data.transforms import Preprocessing, eval_transform
from vitclassifier.inference.explain import ExplainDataset

PREP = Preprocessing(image_size=32)  # resize_size 36


def strip_and_square(folder: Path) -> tuple[Path, Path]:
    """A 3000x1 PNG (3000 pixels: within any decoding budget) and an ordinary 40x40 one."""
    folder.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (3000, 1), (200, 10, 10)).save(folder / "strip.png")
    Image.new("RGB", (40, 40), (10, 200, 10)).save(folder / "square.png")
    return folder / "strip.png", folder / "square.png"


def test_a_long_strip_is_refused_before_resizing_and_the_other_images_go_on(tmp_path, monkeypatch):
    # resized to a short side of 36 the strip would be 108000x36, 3.9 megapixels; the budget: 1
    monkeypatch.setenv("VIT_MAX_PIXELS", "1000000")
    strip, square = strip_and_square(tmp_path)
    for transform in (eval_transform(PREP), train_decode(PREP)):
        dataset = ImageFolderDataset([(strip, 0), (square, 1)], transform, PREP.resize_size)
        pixels, _, _, reason = dataset[0]
        assert pixels is None
        assert reason.startswith("ImageTooLarge: 3000x1 resized to a short side of 36 would be "
                                 "108000x36"), reason
        assert "VIT_MAX_PIXELS" in reason
        assert dataset[1][0] is not None and dataset[1][3] is None
    explained = ExplainDataset([strip, square], PREP)
    assert explained[0][0] is None and "ImageTooLarge" in explained[0][2]
    assert explained[1][0] is not None
    monkeypatch.setenv("VIT_MAX_PIXELS", "5000000")  # a budget that holds the resized strip: read
    assert ImageFolderDataset([(strip, 0)], eval_transform(PREP), PREP.resize_size)[0][3] is None
