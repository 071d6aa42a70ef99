"""``classifier.py --generate-data --multi-label``: scenes of zero to three shapes, each labelled with the
shapes present, written as ``OUT/scenes/scene_NNNN.jpg`` and the label file ``OUT/labels.csv``
(``image,labels``, the labels ``;``-separated, empty for a scene without a shape).

The rule stays "shape, not colour": every shape has its own colour, drawn in its own quarter of the
picture so that none hides another (stripes, which fill the picture, are drawn first, beneath). Every
scene has its own seeded RNG, so the same seed writes byte-identical files.
"""
from __future__ import annotations

import os
import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image, ImageDraw

from vitclassifier.data.synthetic import (
    MAX_GENERATED_SIZE,
    finish,
    foreground,
    paint,
    pick_colours,
    save_ours,
    written_by_us,
)
from vitclassifier.errors import UserError
from vitclassifier.files import atomic_write_bytes, check_output_folder

HEADER = "image,labels"
MAX_SHAPES = 3
QUARTERS = ((0, 0), (1, 0), (0, 1), (1, 1))


def draw_scene(shapes: list[str], size: int, rng: random.Random) -> Image.Image:
    """A scene with ``shapes`` (none: only the background), each in a quarter of its own."""
    canvas = size * 2
    background, _ = pick_colours(rng)
    image = Image.new("RGB", (canvas, canvas), background)
    draw, half = ImageDraw.Draw(image), canvas / 2
    quarters = rng.sample(QUARTERS, len(shapes))
    for shape, (qx, qy) in sorted(zip(shapes, quarters), key=lambda item: item[0] != "stripes"):
        radius = half * rng.uniform(0.3, 0.45)
        cx = qx * half + half / 2 + rng.uniform(-1, 1) * (half / 2 - radius)
        cy = qy * half + half / 2 + rng.uniform(-1, 1) * (half / 2 - radius)
        paint(draw, shape, (cx, cy, radius), foreground(background, rng), rng, canvas)
    return finish(image, size, rng)


def scene_shapes(classes: list[str], rng: random.Random) -> list[str]:
    """Which shapes a scene holds: zero to three different ones, each count equally likely."""
    return sorted(rng.sample(classes, rng.randint(0, min(MAX_SHAPES, len(classes)))))


def ours(labels: Path) -> bool:
    """Is ``labels`` a label file an earlier --generate-data --multi-label wrote?"""
    try:
        lines = labels.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return False
    return bool(lines) and lines[0] == HEADER and all(line.startswith("scenes/scene_") for line in lines[1:])


def check_outputs(out: Path, count: int) -> None:
    """Nothing we would write is a file we did not write before: those are refused, before any drawing."""
    check_output_folder(out, "--out")
    labels, scenes = out / "labels.csv", out / "scenes"
    if scenes.exists() and not scenes.is_dir():
        raise UserError(f"{scenes} is a file, so --out {out} cannot get that folder; move it, or give "
                        f"another --out")
    if labels.exists() and not ours(labels):
        raise UserError(f"{labels} exists and was not written by --generate-data; it is not replaced: move "
                        f"it away, or give another --out")
    foreign = [p for p in (scenes / f"scene_{i:04d}.jpg" for i in range(count))
               if p.exists() and not written_by_us(p)]
    if foreign:
        raise UserError(f"{foreign[0]} exists and was not written by --generate-data; it is not replaced: "
                        f"move it away, or give another --out")


def generate_scenes(out: Path, classes: list[str], count: int, image_size: int, seed: int) -> None:
    """Write ``count`` scenes and their label file; an earlier run's extra scenes (ours only) go."""
    if image_size > MAX_GENERATED_SIZE:
        raise UserError(f"--image-size {image_size} is too large for --generate-data: at most "
                        f"{MAX_GENERATED_SIZE} pixels")
    check_outputs(out, count)
    scenes = out / "scenes"
    scenes.mkdir(parents=True, exist_ok=True)
    for stale in scenes.glob("scene_[0-9][0-9][0-9][0-9].jpg"):
        if int(stale.stem[6:]) >= count and written_by_us(stale):
            stale.unlink()
    drawn = [scene_shapes(classes, random.Random(f"{seed}/scene/{i}/shapes")) for i in range(count)]

    def draw_and_save(index: int) -> None:
        rng = random.Random(f"{seed}/scene/{index}")
        save_ours(draw_scene(drawn[index], image_size, rng), scenes / f"scene_{index:04d}.jpg")

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        try:
            list(pool.map(draw_and_save, range(count)))
        except BaseException:
            pool.shutdown(cancel_futures=True)
            raise
    rows = [HEADER] + [f"scenes/scene_{i:04d}.jpg,{';'.join(shapes)}" for i, shapes in enumerate(drawn)]
    atomic_write_bytes(out / "labels.csv", ("\n".join(rows) + "\n").encode())
    empty = sum(not shapes for shapes in drawn)
    print(f"Wrote {count} scenes of 0-{MAX_SHAPES} shapes ({', '.join(classes)}; {empty} with none) to "
          f"{scenes}/ and their labels to {out / 'labels.csv'} (train with: python train.py --data "
          f"{out / 'labels.csv'})")
