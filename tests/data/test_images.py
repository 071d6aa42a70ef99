"""Safe decoding: every mode becomes correct RGB, EXIF rotation is applied, bad files raise."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from vitclassifier.data.images import FULL_SIZE, TRANSPARENCY_BACKGROUND, load_image


def test_rgba_transparency_lands_on_grey_not_black(tmp_path):
    image = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    image.putpixel((0, 0), (255, 0, 0, 255))
    image.save(tmp_path / "a.png")
    rgb = load_image(tmp_path / "a.png")
    assert rgb.mode == "RGB"
    assert rgb.getpixel((0, 0)) == (255, 0, 0)
    assert rgb.getpixel((3, 3)) == TRANSPARENCY_BACKGROUND


def test_16_bit_grey_is_scaled_not_clipped(tmp_path):
    pixels = np.array([[0, 32896, 65535, 1000]], dtype=np.uint16)
    Image.fromarray(pixels).save(tmp_path / "deep.png")
    rgb = np.asarray(load_image(tmp_path / "deep.png"))
    assert rgb[0, :, 0].tolist() == [0, 128, 255, 4]
    assert (rgb[..., 0] == rgb[..., 2]).all()


@pytest.mark.parametrize("mode", ["L", "LA", "P", "CMYK", "1", "I", "F"])
def test_every_mode_becomes_rgb(tmp_path, mode):
    image = Image.new("RGB", (6, 6), (200, 200, 200)).convert(mode)
    ext = ".tif" if mode in ("CMYK", "I", "F") else ".png"
    image.save(tmp_path / f"x{ext}")
    rgb = load_image(tmp_path / f"x{ext}")
    assert rgb.mode == "RGB" and rgb.size == (6, 6)
    assert np.asarray(rgb).mean() > 100  # not black garbage


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (40, 20), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 20, 20))  # left half red as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display"
    image.save(tmp_path / "phone.jpg", exif=exif, quality=95)
    upright = load_image(tmp_path / "phone.jpg")
    assert upright.size == (20, 40)
    top, bottom = upright.getpixel((10, 5)), upright.getpixel((10, 35))
    assert top[0] > 200 and top[2] < 60  # the stored left half is now on top
    assert bottom[2] > 200 and bottom[0] < 60


def test_truncated_zero_byte_and_non_images_raise(tmp_path):
    Image.new("RGB", (64, 64), (9, 9, 9)).save(tmp_path / "full.jpg")
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "zero.jpg").write_bytes(b"")
    (tmp_path / "text.png").write_text("hello")
    for name in ("cut.jpg", "zero.jpg", "text.png"):
        with pytest.raises(OSError):
            load_image(tmp_path / name)


def test_big_jpeg_decodes_reduced_but_not_below_the_target(tmp_path):
    Image.new("RGB", (2000, 1500), (10, 200, 10)).save(tmp_path / "big.jpg")
    small = load_image(tmp_path / "big.jpg", target_size=224)
    assert small.size == (500, 375) and min(small.size) >= 224
    assert load_image(tmp_path / "big.jpg").size == (2000, 1500)


def test_the_full_upright_size_is_kept_when_a_big_jpeg_is_decoded_smaller(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 800 x 400, shown turned a quarter
    Image.new("RGB", (800, 400), (200, 30, 30)).save(tmp_path / "big.jpg", exif=exif)
    image = load_image(tmp_path / "big.jpg", target_size=32)
    assert image.size[1] < 800 and image.width < image.height  # decoded in draft mode, upright
    assert image.info[FULL_SIZE] == (400, 800)
