"""Real-world folders: unreadable files, odd image modes and odd layouts, end to end.

The messy data set is drawn with Pillow at test time (no binary fixtures): two classes of good
images in every mode and layout a user's folder may hold, next to broken files of the usual kinds.
"""
from __future__ import annotations

import io
import json
import struct
import zlib
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from helpers import TRAIN_OPTIONS, count_decodes
from PIL import Image

import predict
import train
from vitclassifier.data.folders import load_splits
from vitclassifier.data.images import TRANSPARENCY_BACKGROUND as GREY
from vitclassifier.data.images import load_image

SIZE = 32  # side of the small images
ORIENTATION = 0x0112  # EXIF tag; 6 means "rotate 90 degrees clockwise to display"
# Odd images in alpha/: their colour on the left half and on the right half after load_image.
# RGBA, 16-bit and the small EXIF-rotated JPEG are checked pixel by pixel in data/test_images.py.
ODD_COLOURS = {
    "L.png": ((90,) * 3, (30,) * 3),
    "LA.png": ((200,) * 3, GREY),
    "P transparent.png": ((0, 0, 255), GREY),
    "CMYK.jpg": ((200, 30, 60), (20, 160, 90)),
    "int32.tif": ((100,) * 3, (200,) * 3),
    "float.tif": ((64,) * 3, (255,) * 3),
    "1-bit.png": ((255,) * 3, (0,) * 3),
}


def noise(seed: int) -> Image.Image:
    """A small random RGB picture."""
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8))


def halves(mode: str, left, right) -> Image.Image:
    """A small image in ``mode``: ``left`` fills the left half, ``right`` the right half."""
    image = Image.new(mode, (SIZE, SIZE), right)
    image.paste(left, (0, 0, SIZE // 2, SIZE))
    return image


def encoded(image: Image.Image, file_format: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, file_format)
    return buffer.getvalue()


def save_phone_photo(path: Path, size: tuple[int, int]) -> None:
    """Stored red on the left, blue on the right, with EXIF orientation 6: upright, red is on top."""
    image = halves("RGB", (255, 0, 0), (0, 0, 255)).resize(size)
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    image.save(path, exif=exif, quality=90)


def bomb_png(width: int = 30000, height: int = 30000) -> bytes:
    """A tiny valid PNG whose IHDR claims width x height pixels, with a correct CRC."""
    data = bytearray(encoded(Image.new("RGB", (8, 8)), "PNG"))
    data[16:24] = struct.pack(">II", width, height)  # after the signature, chunk length and b"IHDR"
    data[29:33] = struct.pack(">I", zlib.crc32(data[12:29]))  # CRC of b"IHDR" and its 13 data bytes
    return bytes(data)


def broken_chunk_png() -> bytes:
    """A PNG whose IDAT length is halved: the reader meets pixel data where the next chunk should be."""
    data = bytearray(encoded(noise(7), "PNG"))
    at = data.index(b"IDAT") - 4
    (length,) = struct.unpack(">I", data[at:at + 4])
    data[at:at + 4] = struct.pack(">I", length // 2)
    return bytes(data)


def bad_file_contents() -> dict[str, bytes]:
    """File name -> bytes of every kind of unreadable image file."""
    jpeg, png = encoded(noise(1), "JPEG"), encoded(noise(2), "PNG")
    scan = jpeg.index(b"\xff\xda")
    header = jpeg[:scan + 2 + int.from_bytes(jpeg[scan + 2:scan + 4], "big")]  # all up to the pixel data
    return {"zero bytes.jpg": b"",
            "truncated.jpg": jpeg[:len(jpeg) // 2],
            "truncated.png": png[:len(png) // 2],
            "text.png": b"this is a text file, not a picture\n",
            "corrupt.jpg": jpeg[:20] + np.random.default_rng(3).bytes(2000),  # SOI + APP0, then noise
            # libjpeg shrugs off some noisy scans (about 1 in 7); these bytes are one it rejects
            "corrupt scan.jpg": header + np.random.default_rng(3).bytes(len(jpeg) - len(header)),
            "bomb.png": bomb_png(),
            "broken-chunk.png": broken_chunk_png()}


def write_odd_images(folder: Path) -> list[Path]:
    """Good images in every odd mode (and a large one); returns their paths."""
    transparent = halves("P", 1, 0)
    transparent.putpalette([255, 0, 0, 0, 0, 255])  # index 0 red (transparent), 1 blue
    transparent.save(folder / "P transparent.png", transparency=0)
    halves("RGB", (200, 30, 60), (20, 160, 90)).convert("CMYK").save(folder / "CMYK.jpg", quality=95)
    images = {"L.png": halves("L", 90, 30),
              "LA.png": halves("LA", (200, 255), (200, 0)),
              "P.png": noise(4).convert("P"),
              "RGBA.png": halves("RGBA", (255, 0, 0, 255), (255, 0, 0, 0)),
              "16-bit.png": Image.fromarray(np.linspace(0, 65535, SIZE * SIZE).reshape(SIZE, SIZE)
                                            .astype(np.uint16)),
              "int32.tif": halves("I", 100, 200),
              "float.tif": halves("F", 0.25, 1.0),
              "1-bit.png": halves("1", 1, 0)}
    for name, image in images.items():
        image.save(folder / name)
    save_phone_photo(folder / "rotated.jpg", (40, 20))
    save_phone_photo(folder / "large.jpg", (3000, 2000))
    return [folder / name for name in [*images, "P transparent.png", "CMYK.jpg", "rotated.jpg", "large.jpg"]]


@dataclass
class MessyData:
    root: Path
    good: list[Path]  # every readable image inside a class folder
    bad: list[Path]  # every unreadable one
    stray: Path  # a good image directly in root, which belongs to no class

    def bad_file(self, name: str) -> Path:
        return next(path for path in self.bad if path.name == name)


def make_messy_dataset(base: Path) -> MessyData:
    """alpha/ holds the odd modes, beta/ the odd names and layout; both hold bad files."""
    root = base / "data"
    alpha, beta = root / "alpha", root / "beta"
    for folder in (alpha, beta / "nested" / "deeper", beta / ".ipynb_checkpoints", root / "empty",
                   base / "elsewhere"):
        folder.mkdir(parents=True)
    good = write_odd_images(alpha)
    for folder in (alpha, beta):
        for i in range(4):
            good.append(folder / f"photo_{i}.png")
            noise(10 * len(folder.name) + i).save(good[-1])
    odd_names = ["UPPER.JPG", "UPPER.PNG", "café 1.png", "nested/deeper/inner.jpg"]
    for seed, name in enumerate(odd_names):
        noise(20 + seed).save(beta / name)
    good += [beta / name for name in odd_names]
    noise(25).save(base / "elsewhere" / "real.png")
    (beta / "link.png").symlink_to(base / "elsewhere" / "real.png")
    good.append(beta / "link.png")
    (beta / "loop").symlink_to(".", target_is_directory=True)  # a folder link back to its parent

    noise(30).save(beta / ".ipynb_checkpoints" / "x.png")  # hidden: all ignored
    noise(31).save(beta / ".hidden.png")
    for folder in (root, beta, root / "empty"):
        (folder / ".DS_Store").write_bytes(b"\0\0\0\1Bud1\0")
    (beta / "notes.txt").write_text("not an image")
    noise(32).save(root / "stray.png")

    bad = []
    for i, (name, data) in enumerate(bad_file_contents().items()):
        bad.append((alpha, beta)[i % 2] / name)
        bad[-1].write_bytes(data)
    return MessyData(root, good, bad, root / "stray.png")


@pytest.fixture(scope="module")
def messy(tmp_path_factory) -> MessyData:
    return make_messy_dataset(tmp_path_factory.mktemp("messy"))


@dataclass
class Run:
    code: int
    summary: dict
    out: str
    err: str
    output_dir: Path


@pytest.fixture(scope="module")
def messy_run(messy, tiny_vit, tmp_path_factory) -> Run:
    """One epoch of train.main on the messy data; keeps train.train's summary and what was printed.
    Batches of one image, so no sample is dropped to even out batches."""
    output_dir = tmp_path_factory.mktemp("messy-run")
    argv = ["--data", str(messy.root), "--model", str(tiny_vit), "--output-dir", str(output_dir),
            *TRAIN_OPTIONS, "--epochs", "1", "--batch-size", "1"]
    summaries, real_train = [], train.train

    def recording_train(*args, **kwargs):
        summaries.append(real_train(*args, **kwargs))
        return summaries[-1]

    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as patch, redirect_stdout(out), redirect_stderr(err):
        patch.setattr(train, "train", recording_train)
        code = train.main(argv)
    return Run(code, summaries[-1] if summaries else {}, out.getvalue(), err.getvalue(), output_dir)


# ---------------------------------------------------------------------------
# Decoding: what data/test_images.py does not cover
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(ODD_COLOURS))
def test_odd_modes_decode_to_the_colours_they_were_drawn_with(messy, name):
    rgb = np.asarray(load_image(messy.root / "alpha" / name), dtype=int)
    assert rgb.shape == (SIZE, SIZE, 3)
    tolerance = 6 if name.endswith(".jpg") else 0
    left, right = ODD_COLOURS[name]
    assert np.abs(rgb[SIZE // 2, 2] - left).max() <= tolerance
    assert np.abs(rgb[SIZE // 2, SIZE - 3] - right).max() <= tolerance


def test_large_phone_photo_decodes_reduced_and_upright(messy):
    upright = load_image(messy.root / "alpha" / "large.jpg", target_size=36)
    assert upright.size == (250, 375)  # 3000x2000 decoded at 1/8, then turned to portrait
    top, bottom = upright.getpixel((125, 20)), upright.getpixel((125, 350))
    assert top[0] > 200 and top[2] < 60 and bottom[2] > 200 and bottom[0] < 60


def test_a_decompression_bomb_is_refused_at_once(messy, monkeypatch):
    decoded = count_decodes(monkeypatch)
    with pytest.raises(Image.DecompressionBombError):
        load_image(messy.bad_file("bomb.png"))
    assert decoded == []  # refused before a pixel was decoded
    load_image(messy.root / "alpha" / "large.jpg", target_size=36)
    assert decoded  # what a decode looks like: the spy sees it


@pytest.mark.parametrize("name", ["truncated.png", "corrupt.jpg", "corrupt scan.jpg", "broken-chunk.png"])
def test_more_broken_files_raise_os_error(messy, name):
    with pytest.raises(OSError):
        load_image(messy.bad_file(name))


# ---------------------------------------------------------------------------
# Scanning, training and prediction on the messy folder
# ---------------------------------------------------------------------------
def test_scan_lists_the_class_images_and_nothing_else(messy):
    labels, train_samples, val_samples = load_splits(messy.root, 0.2, seed=1)
    assert labels == ["alpha", "beta"]  # the empty folder is no class
    listed = [str(path) for path, _ in train_samples + val_samples]
    assert sorted(listed) == sorted(str(p) for p in messy.good + messy.bad)  # once each, loop or not


@pytest.mark.slow
def test_training_completes_and_says_what_it_skipped(messy, messy_run):
    assert messy_run.code == 0
    assert (messy_run.output_dir / "best" / "config.json").is_file()
    for path in messy.bad:
        assert str(path) in messy_run.err
    assert "note: 1 image(s) directly in" in messy_run.err and "stray.png" in messy_run.err
    assert f"warning: class folder {messy.root / 'empty'} has no images" in messy_run.err
    assert "2 classes" in messy_run.out


@pytest.mark.slow
def test_training_uses_every_good_image(messy, messy_run):
    assert set(messy_run.summary["bad_files"]) == {str(p) for p in messy.bad}
    assert {"train_count", "val_count"} <= messy_run.summary.keys()
    assert messy_run.summary["train_count"] + messy_run.summary["val_count"] == len(messy.good)


@pytest.mark.slow
def test_predicting_the_messy_folder_names_each_bad_file(messy, messy_run, tmp_path, capsys):
    report = tmp_path / "predictions.json"
    code = predict.main(["--model", str(messy_run.output_dir / "best"), "--image", str(messy.root),
                         "--json", str(report)])
    err = capsys.readouterr().err
    data = json.loads(report.read_text())
    assert code == 1
    assert sorted(r["path"] for r in data["results"]) == sorted(str(p) for p in [*messy.good, messy.stray])
    assert sorted(e["path"] for e in data["errors"]) == sorted(str(p) for p in messy.bad)
    for path in messy.bad:
        assert f"error: {path}:" in err


@pytest.mark.slow
def test_a_class_with_only_unreadable_images_stops_training(tmp_path, tiny_vit, capsys):
    root = tmp_path / "data"
    (root / "fine").mkdir(parents=True)
    (root / "all-broken").mkdir()
    for i in range(3):
        noise(40 + i).save(root / "fine" / f"{i}.png")
    for name in ("zero bytes.jpg", "truncated.jpg", "text.png"):
        (root / "all-broken" / name).write_bytes(bad_file_contents()[name])
    code = train.main(["--data", str(root), "--model", str(tiny_vit), "--output-dir", str(tmp_path / "out"),
                       *TRAIN_OPTIONS, "--epochs", "1", "--batch-size", "2"])  # 4 training images
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert code == 2
    assert any("all-broken" in line and "unreadable" in line for line in errors), errors
