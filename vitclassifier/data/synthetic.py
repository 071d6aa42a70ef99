"""The synthetic shapes data set behind ``python classifier.py --generate-data``.

A real visual task drawn with Pillow: classes differ by shape or pattern, never by colour
alone; colour, size, position, rotation, background, blur and noise vary within every class.
Each image has its own seeded RNG, so the same seed writes byte-identical files.
"""
from __future__ import annotations

import argparse
import math
import os
import random
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from vitclassifier.errors import UserError
from vitclassifier.files import check_output_folder, write_via_temp

SHAPES = ("circle", "square", "triangle", "star", "cross", "stripes", "ring", "hexagon")
DEFAULT_CLASSES = "circle,triangle,star,cross,stripes"
# The largest side drawn: models take 32-384 px; each image is drawn at twice its side (4 bytes a
# pixel), so --image-size 100000 would ask for 160 GB.
MAX_GENERATED_SIZE = 1024
MARK = b"vitclassifier --generate-data"  # the JPEG comment of every file we write: only those we replace


def _polygon(cx: float, cy: float, radius: float, corners: int, angle: float, inner: float = 1.0):
    """Points of a regular polygon (inner < 1 alternates radii, which makes a star)."""
    points = []
    steps = corners * (2 if inner < 1.0 else 1)
    for i in range(steps):
        r = radius * (inner if inner < 1.0 and i % 2 else 1.0)
        a = angle + 2 * math.pi * i / steps
        points.append((cx + r * math.cos(a), cy + r * math.sin(a)))
    return points


def pick_colours(rng: random.Random) -> tuple[tuple, tuple]:
    """(background, a foreground colour that stands out from it)."""
    background = tuple(rng.randint(0, 255) for _ in range(3))
    return background, foreground(background, rng)


def foreground(background: tuple, rng: random.Random) -> tuple:
    """A colour that stands out from ``background``."""
    while True:
        colour = tuple(rng.randint(0, 255) for _ in range(3))
        if sum(abs(a - b) for a, b in zip(colour, background)) > 240:
            return colour


def paint(draw: ImageDraw.ImageDraw, shape: str, where: tuple[float, float, float], colour: tuple,
          rng: random.Random, canvas: int) -> None:
    """One instance of ``shape`` at (centre x, centre y, radius), at a random angle and stroke width."""
    cx, cy, radius = where
    angle = rng.uniform(0, 2 * math.pi)
    width = max(2, int(radius * rng.uniform(0.25, 0.4)))
    if shape == "circle":
        draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=colour)
    elif shape == "ring":
        draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], outline=colour, width=width)
    elif shape in ("square", "triangle", "hexagon"):
        draw.polygon(_polygon(cx, cy, radius, {"square": 4, "triangle": 3, "hexagon": 6}[shape], angle),
                     fill=colour)
    elif shape == "star":
        draw.polygon(_polygon(cx, cy, radius, 5, angle, inner=0.45), fill=colour)
    elif shape == "cross":
        for a in (angle, angle + math.pi / 2):
            dx, dy = radius * math.cos(a), radius * math.sin(a)
            draw.line([cx - dx, cy - dy, cx + dx, cy + dy], fill=colour, width=width)
    elif shape == "stripes":
        gap = canvas / rng.randint(4, 7)
        dx, dy = math.cos(angle), math.sin(angle)
        for k in range(-12, 13):  # parallel bars across the whole picture
            ox, oy = cx + k * gap * -dy, cy + k * gap * dx
            draw.line(
                [ox - 2 * canvas * dx, oy - 2 * canvas * dy, ox + 2 * canvas * dx, oy + 2 * canvas * dy],
                fill=colour,
                width=max(2, int(gap * 0.45)),
            )
    else:
        raise ValueError(f"unknown shape {shape!r}")


def finish(image: Image.Image, size: int, rng: random.Random) -> Image.Image:
    """Downsample the double-size canvas (cheap anti-aliasing), blur and add noise a little."""
    image = image.resize((size, size), Image.LANCZOS).filter(ImageFilter.GaussianBlur(rng.uniform(0, 0.5)))
    noise = np.random.default_rng(rng.randrange(2**32)).normal(0, rng.uniform(0, 12), (size, size, 3))
    pixels = np.clip(np.asarray(image, dtype=np.float32) + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels)


def draw_shape(shape: str, size: int, rng: random.Random) -> Image.Image:
    """Draw one random instance of ``shape``: colours, size, place, angle and noise vary."""
    canvas = size * 2  # drawn large, then downsampled
    background, colour = pick_colours(rng)
    image = Image.new("RGB", (canvas, canvas), background)
    radius = canvas * rng.uniform(0.26, 0.4)
    cx = canvas / 2 + rng.uniform(-1, 1) * (canvas / 2 - radius)  # anywhere it fits whole
    cy = canvas / 2 + rng.uniform(-1, 1) * (canvas / 2 - radius)
    paint(ImageDraw.Draw(image), shape, (cx, cy, radius), colour, rng, canvas)
    return finish(image, size, rng)


def parse_classes(spec: str) -> list[str]:
    """argparse type: ``"circle,star"`` -> those shapes; ``"4"`` -> the first four shapes."""
    if spec.strip().isdigit():
        count = int(spec)
        if not 2 <= count <= len(SHAPES):
            raise argparse.ArgumentTypeError(f"choose between 2 and {len(SHAPES)} classes, not {count}")
        return list(SHAPES[:count])
    names = [name.strip() for name in spec.split(",") if name.strip()]
    unknown = [name for name in names if name not in SHAPES]
    if unknown or len(set(names)) < 2 or len(set(names)) < len(names):
        raise argparse.ArgumentTypeError(
            f"{spec!r}: give two or more different shapes from {', '.join(SHAPES)} (or a number)"
        )
    return names


def at_least(minimum: int):
    """argparse type: an integer no smaller than ``minimum``."""

    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    parse.__name__ = "integer"
    return parse


def written_by_us(path: Path) -> bool:
    """Is ``path`` an image an earlier --generate-data wrote (its JPEG comment is MARK)?"""
    if not path.is_file():  # a named pipe would block the open for ever
        return False
    try:
        with Image.open(path) as image:
            return image.info.get("comment") == MARK
    except (OSError, ValueError):  # a folder, an unreadable file, not an image
        return False


def save_ours(image: Image.Image, path: Path) -> None:
    """A generated JPEG, marked as ours, through a temporary file (not fsynced: it can be redrawn)."""
    write_via_temp(path, lambda tmp: image.save(tmp, format="JPEG", quality=92, comment=MARK), durable=False,
                   opened=True)  # Pillow's save is a plain open: the umask's mode, no chmod from threads


def check_generate_outputs(out: Path, classes: list[str], per_class: int, samples_dir: Path) -> None:
    """Before drawing anything: both folders can be written, and no file we would write is one we
    did not write before (the user's own sample.jpg, a real data set in --out): those are refused."""
    check_output_folder(out, "--out")
    check_output_folder(samples_dir, "--samples-dir")
    folders = [(out / name, "--out") for name in classes] + [(samples_dir / "samples", "--samples-dir")]
    for folder, option in folders:
        if folder.exists() and not folder.is_dir():
            raise UserError(f"{folder} is a file, so {option} {folder.parent} cannot get that folder; "
                            f"move the file, or give another {option}")
    targets = [(out / name / f"{name}_{i:04d}.jpg", "--out") for name in classes for i in range(per_class)]
    targets += [(samples_dir / "samples" / f"{name}.jpg", "--samples-dir") for name in classes]
    targets.append((samples_dir / "sample.jpg", "--samples-dir"))
    foreign = [(path, option) for path, option in targets if path.exists() and not written_by_us(path)]
    if foreign:
        (path, option), more = foreign[0], f" (and {len(foreign) - 1} more)" if len(foreign) > 1 else ""
        raise UserError(f"{path}{more} exists and was not written by --generate-data; it is not replaced: "
                        f"move it away, or give another {option}")


def remove_stale(out: Path, samples_dir: Path) -> None:
    """Remove our own earlier output (and only that), so no stale class or sample survives."""
    for shape in SHAPES:
        for stale in (out / shape).glob(f"{shape}_[0-9][0-9][0-9][0-9].jpg"):
            if written_by_us(stale):
                stale.unlink()
        if (out / shape).is_dir() and not any((out / shape).iterdir()):
            (out / shape).rmdir()
        sample = samples_dir / "samples" / f"{shape}.jpg"
        if sample.is_file() and written_by_us(sample):
            sample.unlink()


def generate_data(
    out: Path, classes: list[str], per_class: int, image_size: int, seed: int, samples_dir: Path
) -> None:
    """Write ``out/<class>/<class>_NNNN.jpg`` and a few loose images for the predict quick start.

    Every image has its own seeded RNG, so the same seed always gives byte-identical files. Files
    this function did not write are never replaced (UserError, before anything is drawn).
    """
    if image_size > MAX_GENERATED_SIZE:
        raise UserError(f"--image-size {image_size} is too large for --generate-data: at most "
                        f"{MAX_GENERATED_SIZE} pixels (models take 32-384 px; 64, the default, trains fast)")
    check_generate_outputs(out, classes, per_class, samples_dir)
    remove_stale(out, samples_dir)
    def draw_and_save(name: str, index: int) -> None:
        rng = random.Random(f"{seed}/{name}/{index}")
        save_ours(draw_shape(name, image_size, rng), out / name / f"{name}_{index:04d}.jpg")

    # one thread per core: Pillow and NumPy do most of the work outside the GIL
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        try:
            for name in classes:
                (out / name).mkdir(parents=True, exist_ok=True)
                list(pool.map(draw_and_save, [name] * per_class, range(per_class)))  # raises a thread's error
                print(f"  {name:<10} {per_class} images -> {out / name}")
        except BaseException:  # a full disk, Ctrl-C: stop at once, not after the class's queued images
            pool.shutdown(cancel_futures=True)
            raise
    loose = samples_dir / "samples"
    loose.mkdir(parents=True, exist_ok=True)
    for name in classes:  # a different seed stream: these are not copies of training images
        save_ours(draw_shape(name, image_size, random.Random(f"{seed}/sample/{name}")), loose / f"{name}.jpg")
    write_via_temp(samples_dir / "sample.jpg", lambda tmp: shutil.copyfile(loose / f"{classes[0]}.jpg", tmp))
    print(
        f"Wrote {len(classes) * per_class} images in {len(classes)} classes to {out}/, "
        f"sample images to {samples_dir / 'sample.jpg'} and {loose}/"
    )
