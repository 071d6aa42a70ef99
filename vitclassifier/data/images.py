"""Safe image decoding: any file, any mode, upright, as 8-bit RGB.

Used everywhere an image is read (training, validation, prediction), so a phone photo,
a 16-bit PNG or a transparent logo look the same to the model wherever they appear.
Failures raise OSError/ValueError/DecompressionBombError with a readable reason;
callers decide whether to skip the file or report it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
# What load_image raises for a file that can't be read as an image: callers catch exactly these.
DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)
# Transparent pixels are laid on mid-grey: neutral after normalisation, unlike black.
TRANSPARENCY_BACKGROUND = (128, 128, 128)


def _high_depth_to_8bit(image: Image.Image) -> Image.Image:
    """Scale 16/32-bit integer and float images into 0..255 instead of clipping them to white.

    I;16 is 16-bit by definition; plain I and F hold whatever the file had, so the full scale is
    the smallest usual range the data fits in: 0..1 (floats), 0..255, 0..65535, else its peak."""
    pixels = np.clip(np.asarray(image, dtype=np.float64), 0, None)
    peak = float(pixels.max())
    if image.mode.startswith("I;16"):
        full_scale = 65535.0
    else:
        full_scale = next(
            (r for r in (1.0, 255.0, 65535.0) if peak <= r and (r > 1.0 or image.mode == "F")), peak
        )
    scaled = pixels * (255.0 / max(full_scale, 1e-12))
    return Image.fromarray(np.round(scaled).astype(np.uint8), mode="L")


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to RGB correctly (transparency composited on grey)."""
    if image.mode == "RGB":
        return image
    if image.mode.startswith("I") or image.mode == "F":
        return _high_depth_to_8bit(image).convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, TRANSPARENCY_BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV


def load_image(path: str | Path, target_size: int | None = None) -> Image.Image:
    """Open ``path`` as an upright RGB image.

    ``target_size`` lets big JPEGs decode at a reduced scale (never below that size),
    which is much faster than decoding 12 megapixels to feed a 224-pixel model.
    """
    try:
        with Image.open(path) as image:
            if target_size and image.format == "JPEG":
                image.draft("RGB", (target_size, target_size))
            image.load()  # decode now, so truncated or corrupt files fail here, inside the try of the caller
            upright = ImageOps.exif_transpose(image)
            return to_rgb(upright)
    except SyntaxError as error:  # Pillow's PNG reader reports a broken chunk this way
        raise OSError(f"broken image file: {error}") from error
