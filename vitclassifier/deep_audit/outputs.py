"""What the deep audit writes: its output folder, one CSV file and one picture grid per kind of
finding, and the lines of the text report.

The folder (``--audit-out``, default ``DIR-audit`` beside the data) follows the rules of every
output of this tool: never inside the data, nor inside a folder that holds its images (a label
file's; its pictures would become training images), checked before any work, files written
through a temporary name and ``os.replace``, and never over a file we did not write: a folder
without our marker that already holds one of our file names is refused.
"""
from __future__ import annotations

import math
from pathlib import Path

from vitclassifier import tables
from vitclassifier.data.folders import folders_of
from vitclassifier.data.images import DECODE_ERRORS, load_image
from vitclassifier.deep_audit.cache import CACHE_PREFIX
from vitclassifier.errors import UserError
from vitclassifier.files import (
    atomic_write_text,
    check_output_folder,
    refuse_among_inputs,
    refuse_inside,
    write_via_temp,
)
from vitclassifier.text import printable

MARKER = ".vitclassifier-audit"  # in every folder the deep audit writes
KINDS = ("label_issues", "near_duplicates", "outliers")
OUR_FILES = (*(f"{kind}.csv" for kind in KINDS), *(f"{kind}.png" for kind in KINDS), "report.json")
COLUMNS = {
    "label_issues": ("path", "split", "given_label", "suggested_label", "label_quality"),
    "near_duplicates": ("path", "duplicate_of", "split", "other_split", "class", "other_class", "cosine",
                        "pixel_similarity", "leak", "contradictory"),
    "outliers": ("path", "split", "class", "outlier_score", "view"),
}
GRID_ITEMS = 16  # suspects shown per picture
GRID_COLUMNS = 4
THUMB = 96  # pixels per image in the pictures
TOP = 10  # suspects per kind in the text report


def default_folder(data: Path) -> Path:
    """Beside the data: ``photos`` -> ``photos-audit`` (a label file ``labels.csv`` -> ``labels-audit``)."""
    data = Path(data).absolute()
    return data.with_name(f"{data.stem if data.is_file() else data.name}-audit")


def claim_folder(out: Path, data: Path, samples: list) -> None:
    """Check ``out`` before any work (see the module's docstring), then create it with our marker.
    ``samples``: the images audited; the folders of those that are files (a label file's) are inputs too."""
    if Path(data).is_dir():
        refuse_inside(out, Path(data), "--audit-out", "the data folder")
    refuse_among_inputs(out, folders_of(samples), "--audit-out", "an image folder of the data")
    claim_marked(out, "--audit-out", (MARKER, "python classifier.py --check-data --model"), OUR_FILES,
                 "the audit")


def claim_marked(out: Path, option: str, marker: tuple[str, str], names: tuple[str, ...], who: str) -> None:
    """Check that files can be written in ``out`` and that it is ours (``marker``: (file name, the
    command named in it)) or holds none of ``names`` nor an embedding cache; then create it with the
    marker. The deep audit's folder and --suggest-labels' are claimed so."""
    check_output_folder(out, option)
    if out.is_dir() and not (out / marker[0]).is_file():
        ours = [name for name in names if (out / name).exists()]
        ours += sorted(path.name for path in out.glob(f"{CACHE_PREFIX}*.npz"))
        if ours:
            raise UserError(f"{option} {out} holds {ours[0]}, which {who} did not write; it is not "
                            f"replaced: move it away, or give another {option}")
    try:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / marker[0], f"written by {marker[1]}\n")
    except OSError as error:
        raise UserError(f"cannot write {option} {out}: {error.strerror or error}") from None


def write_csv(path: Path, columns: tuple[str, ...], rows: list[dict]) -> None:
    """One kind's findings, names neutralised for spreadsheets (tables.safe_cell); report.json has them
    as they are."""
    tables.write_csv(path, tables.dict_rows(columns, rows), lineterminator="\n")


def _thumbnail(sample):
    """A small upright RGB copy of a sample for the pictures, or None when it cannot be read."""
    try:
        image = load_image(sample, THUMB)
    except DECODE_ERRORS:
        return None
    image.thumbnail((THUMB, THUMB))
    return image


def _side_by_side(first, second):
    from PIL import Image
    canvas = Image.new("RGB", (2 * THUMB + 4, THUMB), (255, 255, 255))
    for x, image in ((0, first), (THUMB + 4, second)):
        if image is not None:
            canvas.paste(image, (x, 0))
    return canvas


def write_grid(path: Path, cells: list[tuple[list, str]]) -> None:
    """A picture of up to GRID_ITEMS cells, each (samples shown side by side, caption below)."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    cells = cells[:GRID_ITEMS]
    rows = max(1, math.ceil(len(cells) / GRID_COLUMNS))
    wide = any(len(samples) > 1 for samples, _ in cells)
    size = (GRID_COLUMNS * (3.4 if wide else 2.2), rows * 2.6)
    figure, axes = plt.subplots(rows, GRID_COLUMNS, figsize=size, squeeze=False, layout="constrained")
    for ax in axes.flat:
        ax.axis("off")
    for ax, (samples, caption) in zip(axes.flat, cells):
        images = [_thumbnail(sample) for sample in samples]
        shown = _side_by_side(*images) if len(images) == 2 else images[0]
        if shown is not None:
            ax.imshow(shown)
        ax.set_title("\n".join(printable(line) for line in caption.split("\n")), fontsize=7)  # lines kept
    if not cells:
        axes[0, 0].set_title("nothing found", fontsize=9)
    try:
        write_via_temp(path, lambda tmp: figure.savefig(tmp, format="png", dpi=100))
    finally:
        plt.close(figure)


def short(text: str, width: int = 28) -> str:
    """A name cut to ``width`` characters for a caption (the CSV files have it whole)."""
    return text if len(text) <= width else "..." + text[-(width - 3):]


def _top(rows: list[dict], line) -> list[str]:
    more = [f"  ... and {len(rows) - TOP} more (see the CSV file)"] if len(rows) > TOP else []
    return [f"  {line(row)}" for row in rows[:TOP]] + more


def format_findings(deep: dict) -> list[str]:
    """The text report of the deep audit: counts and the top ten of each kind."""
    settings, out = deep["settings"], Path(deep["folder"])
    pairs, issues, strays = deep["near_duplicates"], deep["label_issues"], deep["outliers"]
    lines = [
        "",
        f"Deep audit with {deep['model']}: {deep['images']} images embedded ({deep['from_cache']} from the "
        f"cache) in {deep['seconds']:.0f}s. These are suspects to review, not verdicts: nothing was moved "
        f"or deleted.",
        f"Near-duplicates: {len(pairs)} pair(s) (embeddings' cosine similarity >= "
        f"{settings['duplicate_threshold']}, or thumbnails' >= {settings['pixel_threshold']}); "
        f"{sum(row['leak'] for row in pairs)} across train/val (leaks: validation accuracy comes out too "
        f"high), {sum(row['contradictory'] for row in pairs)} across classes (contradictory labels)",
        *_top(pairs, lambda row: (
            f"{row['path']} ({row['class']}, {row['split']}) ~ {row['duplicate_of']} ({row['other_class']}, "
            f"{row['other_split']}): cosine {row['cosine']:.3f}, pixels {row['pixel_similarity']:.3f}"
            + (" [leak]" if row["leak"] else "") + (" [contradictory]" if row["contradictory"] else ""))),
        f"Suspected label errors: {len(issues)} (out-of-fold linear classifier on the embeddings, "
        f"{settings['folds']} folds, ranked by cleanlab; quality: the probability of the given label)",
        *_top(issues, lambda row: (f"{row['path']} ({row['split']}): given {row['given_label']}, suggested "
                                   f"{row['suggested_label']}, quality {row['label_quality']:.3f}")),
        f"Outliers: {len(strays)} (far from their {settings['neighbours']} nearest neighbours, as the model "
        f"sees them or as they look; score: robust standard deviations above the typical distance)",
        *_top(strays, lambda row: f"{row['path']} ({row['class']}, {row['split']}): "
                                  f"{row['outlier_score']:.1f} ({row['view']})"),
        f"Written to {out}: {', '.join(f'{kind}.csv' for kind in KINDS)} and a picture of each. After "
        f"review, leave files out of training with: python train.py --exclude {out / 'label_issues.csv'}",
    ]
    return lines
