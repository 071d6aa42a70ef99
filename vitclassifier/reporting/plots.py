"""Every picture the tool draws: training curves, the confusion matrix, the most confident mistakes,
and predictions with their confidence bars. matplotlib draws into files only (the Agg backend)."""
from __future__ import annotations

from pathlib import Path

import torch

from vitclassifier.data.folders import utf8_safe
from vitclassifier.data.images import load_image
from vitclassifier.files import write_via_temp

MAX_PICTURES = 24  # predict.py --visualize draws at most this many images, to keep the figure readable
# how class and file names are drawn: literally, never as mathtext ("x^2_$y$") or through TeX
LITERAL = {"parse_math": False, "usetex": False}


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


def write_confusion(normalised: torch.Tensor, labels: list[str], png: Path) -> None:
    """The confusion matrix normalised per true class (rows sum to 1) as a picture."""
    plt = pyplot()
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


def write_mistakes(mistakes: list[tuple[str, int, int, float]], labels: list[str], path: Path) -> None:
    """A grid of the most confidently wrong images, captioned true / predicted / confidence."""
    plt = pyplot()
    columns = 4
    count = max(1, len(mistakes))
    rows = (count + columns - 1) // columns
    figure, axes = plt.subplots(rows, columns, figsize=(3 * columns, 3.3 * rows), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for axis, (image_path, true, predicted, confidence) in zip(axes.flat, mistakes):
        axis.imshow(load_image(image_path, 256))
        axis.set_title(
            f"true: {labels[true]}\npredicted: {labels[predicted]} ({confidence * 100:.0f}%)",
            fontsize=9,
            color="#b22",
            **LITERAL,
        )
    if not mistakes:
        axes[0, 0].text(0.5, 0.5, "no mistakes on the validation set", ha="center", va="center")
    figure.suptitle("most confident mistakes (validation)")
    figure.tight_layout(rect=(0, 0, 1, 1 - 0.3 / (3.3 * rows)))  # leave room for the title
    figure.savefig(path, dpi=90)
    plt.close(figure)


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
        image_axis.set_title(utf8_safe(Path(result["path"]).name), fontsize=9, **LITERAL)  # Latin-1 too
        image_axis.axis("off")
        names = [p["label"] for p in result["predictions"]][::-1]
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
