"""Every picture the tool draws: training curves, the confusion matrix, the most confident mistakes,
and predictions with their confidence bars. matplotlib draws into files only (the Agg backend)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vitclassifier.data.folders import utf8_safe
from vitclassifier.data.images import DECODE_ERRORS, load_image
from vitclassifier.files import write_via_temp
from vitclassifier.reporting.heatmaps import overlay
from vitclassifier.text import printable

MAX_PICTURES = 24  # predict.py --visualize draws at most this many images, to keep the figure readable
# how class and file names are drawn: literally, never as mathtext ("x^2_$y$") or through TeX
LITERAL = {"parse_math": False, "usetex": False}


def drawn(names: list[str]) -> list[str]:
    """Class names as the pictures draw them: control characters escaped (errors.printable), so that
    none reaches matplotlib, which would print it raw (ESC, BEL) in its missing-glyph warnings."""
    return [printable(name) for name in names]


def pyplot():
    import matplotlib
    matplotlib.use("Agg")  # files only, no window, works without a display
    import matplotlib.pyplot as plt
    return plt


def write_curves(rows: list[dict], path: Path) -> None:
    """Loss and top-1 accuracy per epoch, train and validation (and the EMA weights when used)."""
    plt = pyplot()
    from matplotlib.ticker import MaxNLocator
    epochs = [int(r["epoch"]) for r in rows]
    figure, (loss_axis, acc_axis) = plt.subplots(1, 2, figsize=(10, 4))
    for axis, metric, title in ((loss_axis, "loss", "loss"), (acc_axis, "acc", "top-1 accuracy")):
        for prefix, label, style in (
            ("train_", "train", "-o"),
            ("val_", "validation", "-s"),
            ("ema_val_", "validation (EMA)", "--^"),
        ):
            values = [float(r[prefix + metric]) if r.get(prefix + metric) else None for r in rows]
            if any(v is not None for v in values):
                axis.plot(
                    epochs,
                    [v if v is not None else float("nan") for v in values],
                    style,
                    label=label,
                    markersize=4,
                )
        axis.set_xlabel("epoch")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.set_title(title)
        axis.grid(alpha=0.3)
        axis.legend()
    acc_axis.set_ylim(0, 1.02)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)



def write_lr_curve(lrs: list[float], losses: list[float], suggestion: float, path: Path) -> None:
    """The LR range test: smoothed training loss against the peak LR (log scale), the suggestion
    marked, so a user can see whether the curve had a clear descent before it blew up."""
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(6, 4))
    axis.plot(lrs, losses, "-")
    axis.axvline(suggestion, color="tab:red", linestyle="--", label=f"suggested LR {suggestion:.2g}")
    axis.set_xscale("log")
    axis.set_xlabel("peak learning rate")
    axis.set_ylabel("training loss (smoothed)")
    axis.grid(alpha=0.3, which="both")
    axis.legend()
    figure.tight_layout()
    write_via_temp(path, lambda tmp: figure.savefig(tmp, dpi=100, format="png"))
    plt.close(figure)

def write_confusion(normalised: torch.Tensor, labels: list[str], png: Path) -> None:
    """The confusion matrix normalised per true class (rows sum to 1) as a picture."""
    plt, labels = pyplot(), drawn(labels)
    n = len(labels)
    side = min(24, max(5, 0.45 * n + 2))  # readable at 20+ classes: the figure grows with them
    figure, axis = plt.subplots(figsize=(side + 1, side))
    image = axis.imshow(normalised.numpy(), cmap="Blues", vmin=0, vmax=1)
    axis.set_xticks(
        range(n),
        labels,
        rotation=90 if n > 6 else 45,
        ha="center" if n > 6 else "right",
        fontsize=max(6, 11 - n // 10),
        **LITERAL,
    )
    axis.set_yticks(range(n), labels, fontsize=max(6, 11 - n // 10), **LITERAL)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    if n <= 30:  # numbers in the cells while they still fit
        for i in range(n):
            for j in range(n):
                value = normalised[i, j].item()
                if value >= 0.005:
                    axis.text(
                        j,
                        i,
                        f"{value:.2f}",
                        ha="center",
                        va="center",
                        fontsize=max(5, 9 - n // 6),
                        color="white" if value > 0.5 else "black",
                    )
    figure.colorbar(image, ax=axis, fraction=0.046, pad=0.04)
    axis.set_title("confusion matrix (each row: share of that true class)")
    figure.tight_layout()
    figure.savefig(png, dpi=100)
    plt.close(figure)


def mistakes_figure(mistakes: list[tuple[str, int, int, float]], labels: list[str],
                    maps: list[tuple[np.ndarray, np.ndarray] | None] | None = None):
    """The figure of write_mistakes, left open (the layout test measures it). Constrained layout
    sizes every row to its captions, so a caption never covers an image, for any count."""
    plt, labels = pyplot(), drawn(labels)
    panels = 3 if maps else 1  # the image, then the maps for the class chosen and for the true class
    per_row = 2 if maps else 4
    rows = (max(1, len(mistakes)) + per_row - 1) // per_row
    figure, axes = plt.subplots(rows, per_row * panels, figsize=(2.7 * per_row * panels, 3.3 * rows),
                                squeeze=False, layout="constrained")
    for axis in axes.flat:
        axis.axis("off")
    groups = axes.reshape(rows * per_row, panels)  # each mistake's panels, row by row
    for index, (group, (image_path, true, predicted, confidence)) in enumerate(zip(groups, mistakes)):
        group[0].set_title(f"true: {labels[true]}\npredicted: {labels[predicted]} ({confidence * 100:.0f}%)",
                           fontsize=9, color="#b22", **LITERAL)
        try:
            image = np.asarray(load_image(image_path, 256))
        except (*DECODE_ERRORS, TypeError):  # a dataset row, a shard member, or gone since: the caption stays
            group[0].text(0.5, 0.5, printable(image_path)[-40:], ha="center", va="center", fontsize=7)
            continue
        group[0].imshow(image)
        for axis, heat, name, whose in zip(group[1:], maps and maps[index] or (), (predicted, true),
                                           ("its choice", "true class")):
            axis.imshow(overlay(image, resized(heat, image.shape[1], image.shape[0])))
            axis.set_title(f"looked for: {labels[name]}\n({whose})", fontsize=9, **LITERAL)
    if not mistakes:
        axes[0, 0].text(0.5, 0.5, "no mistakes on the validation set", ha="center", va="center")
    figure.suptitle("most confident mistakes (validation)" + (": where the model looked" if maps else ""))
    return figure


def resized(heat: np.ndarray, width: int, height: int) -> np.ndarray:
    """A map drawn over the whole image, at the size the image is shown."""
    if heat.shape == (height, width):
        return heat
    return np.asarray(Image.fromarray(heat.astype(np.float32)).resize((width, height)))  # mode F: floats


def write_mistakes(mistakes: list[tuple[str, int, int, float]], labels: list[str], path: Path,
                   maps: list[tuple[np.ndarray, np.ndarray] | None] | None = None) -> None:
    """A grid of the most confidently wrong images, captioned true / predicted / confidence; with
    ``maps`` (per mistake: the map for the class chosen and for the true class, over the whole
    image, or None), each image is followed by both maps laid over it."""
    figure = mistakes_figure(mistakes, labels, maps)
    try:
        write_via_temp(path, lambda tmp: figure.savefig(tmp, dpi=90, format="png"))
    finally:
        pyplot().close(figure)


def write_predictions(results: list[dict], out: Path) -> None:
    """One row per image: the picture, and its top-k labels as horizontal confidence bars. Written
    to exactly ``out`` (its extension names the format) through a temporary file; its folder must
    exist (predict.py checks that before predicting). A failed write is a UserError."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from vitclassifier.data.images import load_image

    shown = results[:MAX_PICTURES]
    figure, axes = plt.subplots(
        len(shown), 2, figsize=(8, 2.2 * len(shown)), squeeze=False, gridspec_kw={"width_ratios": [1, 1.6]}
    )
    for (image_axis, bar_axis), result in zip(axes, shown):
        image_axis.imshow(load_image(result["path"]))
        shown_name = drawn([utf8_safe(Path(result["path"]).name)])[0]  # a Latin-1 name too
        image_axis.set_title(shown_name, fontsize=9, **LITERAL)
        image_axis.axis("off")
        names = drawn([p["label"] for p in result["predictions"]][::-1])
        confidences = [p["confidence"] * 100 for p in result["predictions"]][::-1]
        bars = bar_axis.barh(range(len(names)), confidences, color=["#9ab"] * (len(names) - 1) + ["#2a7"])
        bar_axis.set_yticks(range(len(names)), names, **LITERAL)
        bar_axis.bar_label(bars, fmt="%.1f%%", padding=3, fontsize=9)
        bar_axis.set_xlim(0, 115)
        bar_axis.set_xlabel("confidence (%)")
        bar_axis.spines[["top", "right"]].set_visible(False)
    figure.tight_layout()
    try:  # the format from out's extension: the temporary name has none matplotlib knows
        write_via_temp(out, lambda tmp: figure.savefig(tmp, dpi=100, format=Path(out).suffix[1:].lower()))
    finally:
        plt.close(figure)
