"""The pixel budget of data/images.py: huge pictures in small files are refused at once or decoded at a
reduced scale, and never cost memory out of proportion to the model."""
from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from helpers import ROOT, count_decodes
from PIL import Image

from vitclassifier.data import images
from vitclassifier.data.images import ImageTooLarge, load_image, pixel_budget, to_rgb
from vitclassifier.errors import UserError

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss in KiB, as on Linux")


def png_claiming(width: int, height: int) -> bytes:
    """A small valid PNG whose header claims width x height pixels (correct CRC): Pillow opens it."""
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(data[12:29]))
    return bytes(data)


def write_16bit_png(path: Path, side: int) -> None:
    """A real side x side 16-bit grey PNG (a ramp in every row), written row by row without ever
    holding the picture: 81 megapixels take 0.5 s and 1.5 MB."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\0" + (bytes(range(256)) * (2 * side // 256 + 1))[:2 * side]
    packer = zlib.compressobj(1)
    pixels = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    header = struct.pack(">IIBBBBB", side, side, 16, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels)
                     + chunk(b"IEND", b""))


PEAK_CHILD = """if True:
    import json, os, resource, sys
    import torch  # before the baseline: only the decoding is measured
    from vitclassifier.data.images import load_image
    from vitclassifier.data.transforms import Preprocessing, eval_transform
    decode = eval_transform(Preprocessing(image_size=224)).decode
    peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    decode(load_image(sys.argv[2], 256))
    results, base = {}, peak()
    for budget, target in (("64000000", 256), ("100000000", 256), ("100000000", None)):
        os.environ["VIT_MAX_PIXELS"] = budget
        try:
            image = load_image(sys.argv[1], target)
            shape = list(decode(image).shape) if target else list(image.size)
        except Exception as error:
            shape = f"{type(error).__name__}: {error}"
        results[f"{budget} {target}"] = {"shape": shape, "over_mb": peak() - base}
    print(json.dumps(results))
"""


def test_a_huge_png_is_refused_at_once_naming_the_budget(tmp_path, monkeypatch):
    monkeypatch.delenv("VIT_MAX_PIXELS", raising=False)
    (tmp_path / "huge.png").write_bytes(png_claiming(12000, 12000))  # 144 megapixels in 70 bytes
    decoded = count_decodes(monkeypatch)
    message = r"144\.0 megapixels, over the decoding budget of 64 megapixels"
    with pytest.raises(ImageTooLarge, match=message) as caught:
        load_image(tmp_path / "huge.png", 256)
    assert decoded == []  # refused before a pixel was decoded
    assert "VIT_MAX_PIXELS" in str(caught.value) and isinstance(caught.value, Image.DecompressionBombError)


def test_a_jpeg_over_the_budget_decodes_at_a_reduced_scale(tmp_path, monkeypatch):
    Image.new("RGB", (400, 300), (10, 200, 10)).save(tmp_path / "big.jpg")
    monkeypatch.setenv("VIT_MAX_PIXELS", "10000")  # 120,000 pixels: 1/4 scale is the first within it
    assert load_image(tmp_path / "big.jpg").size == (100, 75)
    assert load_image(tmp_path / "big.jpg", target_size=20).size == (50, 38)  # the target asks for 1/8
    monkeypatch.setenv("VIT_MAX_PIXELS", "100")  # not even 1/8 (50x38) fits
    with pytest.raises(ImageTooLarge, match="even decoded at 1/8 scale"):
        load_image(tmp_path / "big.jpg")


def test_the_budget_can_be_raised_and_a_bad_value_is_named(monkeypatch):
    monkeypatch.delenv("VIT_MAX_PIXELS", raising=False)
    assert pixel_budget() == images.MAX_PIXELS == 64_000_000
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # restored afterwards
    monkeypatch.setenv("VIT_MAX_PIXELS", "400000000")
    assert pixel_budget() == 400_000_000 and Image.MAX_IMAGE_PIXELS == 400_000_000
    monkeypatch.setenv("VIT_MAX_PIXELS", "lots")
    with pytest.raises(UserError, match="VIT_MAX_PIXELS='lots' is not a number of pixels"):
        pixel_budget()


def test_pillows_bomb_warning_gives_way_to_our_budget(tmp_path, monkeypatch):
    """Pillow's two-line DecompressionBombWarning is not shown; our budget decides (here: accepted)."""
    Image.new("RGB", (400, 300)).save(tmp_path / "wide.jpg")
    monkeypatch.delenv("VIT_MAX_PIXELS", raising=False)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100_000)  # 120,000 pixels: Pillow warns
    with warnings.catch_warnings(record=True) as caught:
        assert load_image(tmp_path / "wide.jpg").size == (400, 300)
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]
    (tmp_path / "bomb.png").write_bytes(png_claiming(30000, 30000))  # over Pillow's hard limit
    with pytest.raises(ImageTooLarge, match="VIT_MAX_PIXELS"):
        load_image(tmp_path / "bomb.png")


def test_strips_and_box_reduction_give_the_whole_pictures_pixels(tmp_path, monkeypatch):
    deep = np.arange(40 * 30, dtype=np.uint16).reshape(30, 40) * 54
    Image.fromarray(deep).save(tmp_path / "deep.png")
    rgba = Image.fromarray(np.random.default_rng(0).integers(0, 256, (30, 40, 4), dtype=np.uint8))
    rgba.save(tmp_path / "rgba.png")
    monkeypatch.setattr(images, "STRIP_PIXELS", 64)  # strips of 1 row (or of the reduce factor)
    monkeypatch.setattr(images, "REDUCE_ABOVE", 0)
    grey = np.asarray(load_image(tmp_path / "deep.png"))[..., 0]
    assert (grey == np.round(deep / 257)).all()  # integer maths, no float64 copy, same numbers
    reduced = load_image(tmp_path / "rgba.png", target_size=5)  # 30 // 10: reduced by 3
    assert reduced.size == (14, 10)
    assert (np.asarray(reduced) == np.asarray(to_rgb(rgba).reduce(3))).all()


@pytest.mark.slow
def test_an_81_megapixel_16_bit_png_costs_little_memory(tmp_path):
    """It used to cost 2.2 GB (float64 copies). Within the default budget it is refused at once; with
    the budget raised it decodes within 600 MB, as the data loader and at full size."""
    write_16bit_png(tmp_path / "deep.png", 9000)
    Image.new("RGB", (32, 32)).save(tmp_path / "small.png")
    command = [sys.executable, "-c", PEAK_CHILD, str(tmp_path / "deep.png"), str(tmp_path / "small.png")]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    refused, loaded, full = result["64000000 256"], result["100000000 256"], result["100000000 None"]
    assert refused["shape"].startswith("ImageTooLarge: 9000x9000 is 81.0 megapixels"), result
    assert refused["over_mb"] < 20, result
    assert loaded["shape"] == [3, 224, 224] and loaded["over_mb"] < 600, result
    assert full["shape"] == [9000, 9000] and full["over_mb"] < 600, result


def test_generate_data_refuses_a_huge_image_size(tmp_path, capsys):
    import classifier
    code = classifier.main(["--generate-data", "--image-size", "100000", "--out", str(tmp_path / "data"),
                            "--samples-dir", str(tmp_path)])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and "--image-size 100000" in errors[0] and "1024" in errors[0]
    assert not (tmp_path / "data").exists()

