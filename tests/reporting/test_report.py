"""What a run shows (reporting/report.py, plots.py): pictures and tables that stay readable."""
from __future__ import annotations

import csv
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from vitclassifier.reporting.plots import mistakes_figure, pyplot, write_confusion
from vitclassifier.reporting.report import normalised_confusion

PICTURES = ("curves.png", "confusion_matrix.png", "mistakes.png")


@pytest.mark.slow
def test_every_run_writes_valid_pictures_and_tables(trained_run):
    for name in PICTURES:
        with Image.open(trained_run / name) as picture:
            picture.verify()  # a complete, valid PNG
        with Image.open(trained_run / name) as picture:
            assert picture.format == "PNG" and min(picture.size) >= 300, name
    with open(trained_run / "per_class.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["class"] for r in rows] == ["horizontal", "plain", "vertical"]
    assert sum(int(r["support"]) for r in rows) == 240 and all(0 <= float(r["f1"]) <= 1 for r in rows)
    with open(trained_run / "confusion_matrix.csv", newline="") as handle:
        matrix = [[float(v) for v in row[1:]] for row in list(csv.reader(handle))[1:]]
    assert all(sum(row) == pytest.approx(1.0, abs=1e-3) for row in matrix)  # normalised per true class


@pytest.mark.slow
def test_confusion_matrix_stays_readable_with_many_classes(tmp_path):
    labels = [f"class_{i:02d}" for i in range(25)]
    confusion = torch.eye(25, dtype=torch.int64) * 8 + torch.randint(0, 2, (25, 25))
    write_confusion(normalised_confusion(confusion), labels, tmp_path / "big.png")
    write_confusion(normalised_confusion(confusion[:3, :3]), labels[:3], tmp_path / "small.png")
    with Image.open(tmp_path / "big.png") as big, Image.open(tmp_path / "small.png") as small:
        assert big.size[0] > 1.8 * small.size[0]  # the figure grows with the classes, so names stay legible


def covered_images(figure) -> list[str]:
    """Every caption (each panel's title and the figure's) that overlaps a drawn image."""
    figure.draw_without_rendering()  # the layout, without rasterising (fast)
    renderer = figure.canvas.get_renderer()
    images = [image.get_window_extent(renderer) for axis in figure.axes for image in axis.images]
    captions = [axis.title for axis in figure.axes if axis.get_title()] + [figure._suptitle]
    return [caption.get_text() for caption in captions for box in images
            if caption.get_window_extent(renderer).overlaps(box)]


def test_control_characters_in_class_names_never_reach_matplotlib(tmp_path):
    labels = ["\x1b[31mred\x07", "plain"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        write_confusion(torch.eye(2), labels, tmp_path / "confusion.png")
        figure = mistakes_figure([("row 3 of a dataset", 0, 1, 0.9)], labels)
    try:
        assert "true: \\x1b[31mred\\x07" in figure.axes[0].get_title()  # drawn escaped, as printed
    finally:
        pyplot().close(figure)
    assert not any(set(str(w.message)) & {"\x1b", "\x07"} for w in caught)


@pytest.mark.slow
def test_mistake_captions_never_cover_an_image(tmp_path):
    """Issue 18: in the two-row grid, row two's captions were drawn over row one's images."""
    square = tmp_path / "square.png"
    Image.new("RGB", (64, 64), (200, 30, 30)).save(square)
    labels = ["circle", "a rather long class name", "star"]
    heat = np.outer(np.arange(64), np.ones(64)).astype(np.float32)
    plt = pyplot()
    cases = [(count, None) for count in range(1, 17)] + [(count, [(heat, heat.T)] * count)
                                                           for count in (2, 5, 16)]
    for count, maps in cases:
        figure = mistakes_figure([(str(square), 0, 1, 0.9)] * count, labels, maps)
        try:
            assert len(figure.axes[0].images) == 1 and sum(len(axis.images) for axis in figure.axes) == (
                count * (3 if maps else 1))  # the images (and maps) are there to be covered
            assert covered_images(figure) == [], (count, maps is not None)
        finally:
            plt.close(figure)
