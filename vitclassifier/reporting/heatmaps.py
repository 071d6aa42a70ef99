"""Explanation pictures: an image and, beside it, one heatmap overlay per explained class, each
captioned as plain text. Drawn with numpy and Pillow, not matplotlib: a folder of thousands of
images is explained at close to the model's own speed, and the picture costs little of it."""
from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from vitclassifier.text import printable

PANEL = 224  # each panel's longer side, in pixels: small images are enlarged to it, big ones reduced
GAP = 6  # pixels between panels
MIN_COLUMN = 150  # the narrowest column, so that a caption fits
CAPTION = 14  # caption font size; the caption row is a little taller
BACKGROUND = (255, 255, 255)
TEXT = (20, 20, 20)


@cache
def colour_table() -> tuple[np.ndarray, np.ndarray]:
    """For each of 256 relevance levels, low to high: its RGB colour, from matplotlib's "turbo" (dark
    blue to red, readable over any photo), and how much of the image it covers (0-255)."""
    from matplotlib import colormaps
    levels = np.linspace(0, 1, 256)
    colours = np.round(colormaps["turbo"](levels)[:, :3] * 255).astype(np.uint8)
    return colours, np.round((0.2 + 0.55 * levels) * 255).astype(np.uint8)


@cache
def caption_font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """DejaVu Sans (shipped with matplotlib: it draws most scripts), else Pillow's own font."""
    try:
        import matplotlib
        return ImageFont.truetype(str(Path(matplotlib.get_data_path()) / "fonts/ttf/DejaVuSans.ttf"), CAPTION)
    except (ImportError, OSError):
        return ImageFont.load_default(CAPTION)


def panel_size(width: int, height: int) -> tuple[int, int]:
    """The size an image of ``width`` x ``height`` is drawn at, same shape: a small one enlarged by a
    whole factor (its pixels stay square and sharp: 64 px becomes 192), a big one reduced to PANEL."""
    longest = max(width, height)
    scale = PANEL // longest if longest <= PANEL else PANEL / longest
    return max(1, round(width * scale)), max(1, round(height * scale))


def panel_image(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """``image`` at its panel ``size``: enlarged pixel by pixel, or reduced smoothly (and quickly)."""
    if size[0] >= image.width:
        return image.resize(size, Image.Resampling.NEAREST)
    return image.resize(size, Image.Resampling.BILINEAR, reducing_gap=3.0)


def overlay(image: np.ndarray, heat: np.ndarray) -> np.ndarray:
    """``image`` (h, w, 3 uint8) with ``heat`` (h, w, non-negative) laid over it in colour (overlaid)."""
    return np.asarray(overlaid(Image.fromarray(image), heat))


def overlaid(image: Image.Image, heat: np.ndarray) -> Image.Image:
    """``image`` (RGB) with ``heat`` (its size, non-negative) laid over it in colour. The map is scaled
    to its own maximum; where it is high the colour covers more of the image. Pillow does the
    colouring and blending in C (a palette, a lookup and a composite): thousands of images stay fast."""
    peak = float(heat.max())
    level = np.round(heat * (255 / peak)).astype(np.uint8) if peak > 0 else np.zeros(heat.shape, np.uint8)
    colours, cover = colour_table()
    coloured = Image.fromarray(level)  # mode L
    mask = coloured.point(cover.tolist())
    coloured = Image.frombytes("P", coloured.size, coloured.tobytes())
    coloured.putpalette(colours.tobytes())
    return Image.composite(coloured.convert("RGB"), image, mask)


def fitted(text: str, width: int) -> str:
    """``text`` shown safely (control characters escaped) and cut with "…" to fit ``width`` pixels."""
    text, font = printable(text), caption_font()
    if font.getlength(text) <= width:
        return text
    while text and font.getlength(text + "…") > width:
        text = text[:-1]
    return text + "…"


def explanation_picture(image: Image.Image, heats: list[np.ndarray], captions: list[str]) -> Image.Image:
    """The picture --explain writes: ``image`` (already at panel_size) and one overlay per map in
    ``heats`` (each at the image's size), side by side, each overlay under its caption in
    ``captions``. The image itself goes uncaptioned: the picture's file name is the image's."""
    image = image.convert("RGB")
    width, height = image.size
    column, caption_row = max(width, MIN_COLUMN), CAPTION + 8  # a narrow image still gets a caption
    panels = [image, *(overlaid(image, heat) for heat in heats)]
    canvas = Image.new("RGB", (len(panels) * (column + GAP) - GAP, caption_row + height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    for index, panel in enumerate(panels):
        left = index * (column + GAP)
        canvas.paste(panel, (left + (column - width) // 2, caption_row))
        if index:
            draw.text((left, 3), fitted(captions[index - 1], column), fill=TEXT, font=caption_font())
    return canvas
