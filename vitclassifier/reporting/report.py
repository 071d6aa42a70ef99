"""What a run shows the user, written into its output folder:

  curves.png                  loss and accuracy per epoch, train and validation
  confusion_matrix.png / .csv normalised per true class, class names on the axes
  per_class.csv               precision, recall, F1 and support per class
  mistakes.png                the validation images the model got most confidently wrong

All from a confusion matrix and the evaluation outputs of loop.evaluate (logits, labels, paths).
"""
from __future__ import annotations

import csv
import sys
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from vitclassifier.config import TrainConfig
from vitclassifier.data.dataset import ImageFolderDataset, collate_skipping_bad
from vitclassifier.data.folders import scan_class_folders, validation_folder
from vitclassifier.data.transforms import eval_transform
from vitclassifier.devices import loader_workers
from vitclassifier.errors import UserError
from vitclassifier.inference.loading import load_for_prediction, prediction_device
from vitclassifier.model.checkpoint import load_checkpoint, update_info
from vitclassifier.reporting.plots import write_confusion, write_curves, write_mistakes
from vitclassifier.training.distributed import World
from vitclassifier.training.loop import Run, evaluate
from vitclassifier.training.metrics import (
    expected_calibration_error,
    fit_temperature,
    per_class_scores,
)

MAX_MISTAKES = 16


def normalised_confusion(confusion: torch.Tensor) -> torch.Tensor:
    """Each row (true class) divided by its count: the share of that class predicted as each label."""
    rows = confusion.double()
    return rows / rows.sum(1, keepdim=True).clamp(min=1)


def write_confusion_table(normalised: torch.Tensor, labels: list[str], path: Path) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["true \\ predicted", *labels])
        for name, row in zip(labels, normalised.tolist()):
            writer.writerow([name, *(f"{v:.4f}" for v in row)])


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


def write_report(directory: Path, labels: list[str], evaluation: dict, temperature: float = 1.0,
                 rows: list[dict] | None = None) -> list[Path]:
    """Every picture and table for one evaluated model; returns the files written."""
    directory.mkdir(parents=True, exist_ok=True)
    written = [directory / name for name in ("confusion_matrix.png", "confusion_matrix.csv", "per_class.csv",
                                             "mistakes.png")]
    normalised = normalised_confusion(evaluation["confusion"])
    write_confusion(normalised, labels, written[0])
    write_confusion_table(normalised, labels, written[1])
    write_per_class(evaluation["confusion"], labels, written[2])
    probabilities = (evaluation["logits"] / temperature).softmax(dim=1)
    write_mistakes(
        most_confident_mistakes(probabilities, evaluation["labels"], evaluation["paths"]), labels, written[3]
    )
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


def report_run(
    run: Run, directory: Path, labels: list[str], val_loader: DataLoader, rows: list[dict], fit: bool
) -> dict:
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
        print(
            f"Calibration: temperature {calibration['temperature']:.3f}, expected calibration error "
            f"{calibration['ece_before'] * 100:.1f}% -> {calibration['ece_after'] * 100:.1f}%"
        )
    print(f"Pictures and tables: {directory}/curves.png, confusion_matrix.png, per_class.csv, mistakes.png")
    return calibration


def evaluation_samples(
    data: Path, labels: list[str], model_path: Path
) -> tuple[Path, list[tuple[Path, int]]]:
    """The labelled images of --data (its val/ part when it has one), labelled by the model's label map."""
    root = validation_folder(data) or data
    classes = scan_class_folders(root)
    unknown, absent = sorted(set(classes) - set(labels)), sorted(set(labels) - set(classes))
    if unknown or absent:
        parts = [
            unknown and f"not in the checkpoint: {', '.join(unknown)}",
            absent and f"missing from the folder: {', '.join(absent)}",
        ]
        raise UserError(
            f"the classes of {root} don't match the checkpoint {model_path}: "
            + "; ".join(part for part in parts if part)
        )
    return root, [(path, labels.index(name)) for name in labels for path in classes[name]]


def evaluate_checkpoint(config: TrainConfig, output_dir: Path | None = None) -> dict:
    """``train.py --evaluate``: score the checkpoint --model, or an export of one, on the labelled
    folder --data, with the same metrics and pictures as after training, loaded and run exactly as
    predict.py would. The pictures go to ``output_dir`` (default: beside the model)."""
    model_path = Path(config.model.name)
    loaded = load_for_prediction(
        model_path, prediction_device(model_path, config.runtime.device), config.runtime.precision
    )
    root, samples = evaluation_samples(config.data.folder, loaded.labels, model_path)
    run = Run(loaded.model, loaded.model, loaded.device, loaded.dtype, World(), config.recipe)
    dataset = ImageFolderDataset(samples, eval_transform(loaded.prep), loaded.prep.resize_size)
    loader = DataLoader(
        dataset,
        batch_size=config.data.batch_size,
        collate_fn=collate_skipping_bad,
        num_workers=loader_workers(config.data.num_workers, loaded.device),
    )
    evaluation = evaluate(
        run, loaded.model, loader, len(loaded.labels), f"evaluating {root}", keep_outputs=True
    )
    if "logits" not in evaluation:
        raise UserError(f"no readable image in {root}")
    out = output_dir or Path(f"{model_path.resolve()}-evaluation")
    write_report(out, loaded.labels, evaluation, loaded.temperature)
    ece = expected_calibration_error(
        (evaluation["logits"] / loaded.temperature).softmax(1), evaluation["labels"]
    )
    print(
        f"{root}: {evaluation['count']} images | loss {evaluation['loss']:.4f} acc {evaluation['acc']:.3f} "
        f"top3 {evaluation['top3']:.3f} macro-F1 {evaluation['macro_f1']:.3f} | "
        f"calibration error {ece * 100:.1f}% "
        f"(temperature {loaded.temperature:.3f})\nPictures and tables: {out}"
    )
    for path, reason in sorted(run.bad_files.items()):
        print(f"warning: skipped {path}: {reason}", file=sys.stderr)
    return evaluation
