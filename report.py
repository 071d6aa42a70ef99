"""What a run shows the user, written into its output folder:

  curves.png                  loss and accuracy per epoch, train and validation
  confusion_matrix.png / .csv normalised per true class, class names on the axes
  per_class.csv               precision, recall, F1 and support per class
  mistakes.png                the validation images the model got most confidently wrong

All from a confusion matrix and the evaluation outputs of loop.evaluate (logits, labels, paths).
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from checkpoint import load_checkpoint, update_info
from classifier import ImageFolderDataset, UserError, collate_skipping_bad, eval_transform, scan_class_folders
from devices import loader_workers
from distributed import World
from images import load_image
from loop import Run, evaluate
from metrics import expected_calibration_error, fit_temperature, per_class_scores
from predict import load_for_prediction, prediction_device

MAX_MISTAKES = 16


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")  # files only, no window, works without a display
    import matplotlib.pyplot as plt
    return plt


def write_curves(rows: list[dict], path: Path) -> None:
    """Loss and top-1 accuracy per epoch, train and validation (and the EMA weights when used)."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator
    epochs = [int(r["epoch"]) for r in rows]
    figure, (loss_axis, acc_axis) = plt.subplots(1, 2, figsize=(10, 4))
    for axis, metric, title in ((loss_axis, "loss", "loss"), (acc_axis, "acc", "top-1 accuracy")):
        for prefix, label, style in (("train_", "train", "-o"), ("val_", "validation", "-s"), ("ema_val_", "validation (EMA)", "--^")):
            values = [float(r[prefix + metric]) if r.get(prefix + metric) else None for r in rows]
            if any(v is not None for v in values):
                axis.plot(epochs, [v if v is not None else float("nan") for v in values], style, label=label, markersize=4)
        axis.set_xlabel("epoch")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.set_title(title)
        axis.grid(alpha=0.3)
        axis.legend()
    acc_axis.set_ylim(0, 1.02)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def write_confusion(confusion: torch.Tensor, labels: list[str], png: Path, table: Path) -> None:
    """The confusion matrix normalised per true class (rows sum to 1), as a picture and as CSV."""
    rows = confusion.double()
    normalised = rows / rows.sum(1, keepdim=True).clamp(min=1)
    with open(table, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["true \\ predicted", *labels])
        for name, row in zip(labels, normalised.tolist()):
            writer.writerow([name, *(f"{v:.4f}" for v in row)])
    plt = _pyplot()
    n = len(labels)
    side = min(24, max(5, 0.45 * n + 2))  # readable at 20+ classes: the figure grows with them
    figure, axis = plt.subplots(figsize=(side + 1, side))
    image = axis.imshow(normalised.numpy(), cmap="Blues", vmin=0, vmax=1)
    axis.set_xticks(range(n), labels, rotation=90 if n > 6 else 45, ha="center" if n > 6 else "right",
                    fontsize=max(6, 11 - n // 10))
    axis.set_yticks(range(n), labels, fontsize=max(6, 11 - n // 10))
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    if n <= 30:  # numbers in the cells while they still fit
        for i in range(n):
            for j in range(n):
                value = normalised[i, j].item()
                if value >= 0.005:
                    axis.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=max(5, 9 - n // 6),
                              color="white" if value > 0.5 else "black")
    figure.colorbar(image, ax=axis, fraction=0.046, pad=0.04)
    axis.set_title("confusion matrix (each row: share of that true class)")
    figure.tight_layout()
    figure.savefig(png, dpi=100)
    plt.close(figure)


def write_per_class(confusion: torch.Tensor, labels: list[str], path: Path) -> None:
    scores = per_class_scores(confusion)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["class", "precision", "recall", "f1", "support"])
        for i, name in enumerate(labels):
            writer.writerow([name, f"{scores['precision'][i]:.4f}", f"{scores['recall'][i]:.4f}",
                             f"{scores['f1'][i]:.4f}", int(scores["support"][i])])


def most_confident_mistakes(probabilities: torch.Tensor, labels: torch.Tensor, paths: list[str],
                            limit: int = MAX_MISTAKES) -> list[tuple[str, int, int, float]]:
    """(path, true, predicted, confidence) of the wrong predictions, the most confident first."""
    confidence, predicted = probabilities.max(dim=1)
    wrong = (predicted != labels).nonzero().flatten().tolist()
    wrong.sort(key=lambda i: -confidence[i].item())
    return [(paths[i], labels[i].item(), predicted[i].item(), confidence[i].item()) for i in wrong[:limit]]


def write_mistakes(mistakes: list[tuple[str, int, int, float]], labels: list[str], path: Path) -> None:
    """A grid of the most confidently wrong images, captioned true / predicted / confidence."""
    plt = _pyplot()
    columns = 4
    count = max(1, len(mistakes))
    rows = (count + columns - 1) // columns
    figure, axes = plt.subplots(rows, columns, figsize=(3 * columns, 3.3 * rows), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for axis, (image_path, true, predicted, confidence) in zip(axes.flat, mistakes):
        axis.imshow(load_image(image_path, 256))
        axis.set_title(f"true: {labels[true]}\npredicted: {labels[predicted]} ({confidence * 100:.0f}%)",
                       fontsize=9, color="#b22")
    if not mistakes:
        axes[0, 0].text(0.5, 0.5, "no mistakes on the validation set", ha="center", va="center")
    figure.suptitle("most confident mistakes (validation)")
    figure.tight_layout(rect=(0, 0, 1, 1 - 0.3 / (3.3 * rows)))  # leave room for the title
    figure.savefig(path, dpi=90)
    plt.close(figure)


def write_report(directory: Path, labels: list[str], evaluation: dict, temperature: float = 1.0,
                 rows: list[dict] | None = None) -> list[Path]:
    """Every picture and table for one evaluated model; returns the files written."""
    directory.mkdir(parents=True, exist_ok=True)
    written = [directory / name for name in ("confusion_matrix.png", "confusion_matrix.csv", "per_class.csv",
                                             "mistakes.png")]
    write_confusion(evaluation["confusion"], labels, written[0], written[1])
    write_per_class(evaluation["confusion"], labels, written[2])
    probabilities = (evaluation["logits"] / temperature).softmax(dim=1)
    write_mistakes(most_confident_mistakes(probabilities, evaluation["labels"], evaluation["paths"]), labels, written[3])
    if rows:
        write_curves(rows, directory / "curves.png")
        written.append(directory / "curves.png")
    return written


def calibrate(evaluation: dict) -> dict:
    """Fit the softmax temperature on the validation outputs; expected calibration error before/after."""
    logits, labels = evaluation["logits"], evaluation["labels"]
    temperature = fit_temperature(logits, labels)
    before = expected_calibration_error(logits.softmax(1), labels)
    after = expected_calibration_error((logits / temperature).softmax(1), labels)
    if after > before:  # e.g. a model near chance, where the best fit is "know nothing": keep it as it was
        temperature, after = 1.0, before
    return {"temperature": temperature, "ece_before": before, "ece_after": after}


def report_run(run: Run, directory: Path, labels: list[str], val_loader: DataLoader, rows: list[dict],
               fit: bool) -> dict:
    """After training: evaluate best/ once more on the whole validation set, calibrate it (``fit``),
    record the temperature in best/training_info.json, and write every picture and table."""
    model, _, _ = load_checkpoint(directory / "best")
    evaluation = evaluate(run, model.to(run.device), val_loader, len(labels), "report", keep_outputs=True)
    if "logits" not in evaluation:
        return {}
    calibration = calibrate(evaluation) if fit else {"temperature": 1.0}
    update_info(directory / "best", **calibration)
    write_report(directory, labels, evaluation, calibration["temperature"], rows)
    if fit:
        print(f"Calibration: temperature {calibration['temperature']:.3f}, expected calibration error "
              f"{calibration['ece_before'] * 100:.1f}% -> {calibration['ece_after'] * 100:.1f}%")
    print(f"Pictures and tables: {directory}/curves.png, confusion_matrix.png, per_class.csv, mistakes.png")
    return calibration


def evaluate_checkpoint(args: argparse.Namespace, given: set[str]) -> dict:
    """``train.py --evaluate``: score the checkpoint --model, or an .onnx / .xml export of one, on the
    labelled folder --data (its val/ part when it has train/ and val/), with the same metrics and
    pictures as after training, loaded and run exactly as predict.py would."""
    model_path = Path(args.model)
    device = prediction_device(model_path, args.device)
    model, prep, labels, temperature, dtype = load_for_prediction(model_path, device, args.precision)
    root = next((args.data / name for name in ("val", "validation") if (args.data / name).is_dir()), args.data)
    classes = scan_class_folders(root)
    unknown, absent = sorted(set(classes) - set(labels)), sorted(set(labels) - set(classes))
    if unknown or absent:
        raise UserError(f"the classes of {root} don't match the checkpoint {args.model}: "
                        + "; ".join(part for part in (unknown and f"not in the checkpoint: {', '.join(unknown)}",
                                                      absent and f"missing from the folder: {', '.join(absent)}") if part))
    samples = [(path, labels.index(name)) for name in labels for path in classes[name]]
    run = Run(model, model, device, dtype, World(), args)
    loader = DataLoader(ImageFolderDataset(samples, eval_transform(prep), prep.resize_size), batch_size=args.batch_size,
                        num_workers=loader_workers(args.num_workers, device), collate_fn=collate_skipping_bad)
    evaluation = evaluate(run, model, loader, len(labels), f"evaluating {root}", keep_outputs=True)
    if "logits" not in evaluation:
        raise UserError(f"no readable image in {root}")
    out = args.output_dir if "output_dir" in given else Path(f"{model_path.resolve()}-evaluation")
    write_report(out, labels, evaluation, temperature)
    ece = expected_calibration_error((evaluation["logits"] / temperature).softmax(1), evaluation["labels"])
    print(f"{root}: {evaluation['count']} images | loss {evaluation['loss']:.4f} acc {evaluation['acc']:.3f} "
          f"top3 {evaluation['top3']:.3f} macro-F1 {evaluation['macro_f1']:.3f} | calibration error {ece * 100:.1f}% "
          f"(temperature {temperature:.3f})\nPictures and tables: {out}")
    for path, reason in sorted(run.bad_files.items()):
        print(f"warning: skipped {path}: {reason}", file=sys.stderr)
    return evaluation
