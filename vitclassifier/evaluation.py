"""``train.py --evaluate``: score a checkpoint, or any export of it, on a labelled folder, with the
metrics and pictures of a training run. The top of the library: it loads models as inference does
and evaluates them with training's evaluation pass."""
from __future__ import annotations

import sys
from pathlib import Path

from torch.utils.data import DataLoader

from vitclassifier.config import TrainConfig
from vitclassifier.data.dataset import ImageFolderDataset, collate_skipping_bad
from vitclassifier.data.folders import scan_class_folders, validation_folder
from vitclassifier.data.transforms import eval_transform
from vitclassifier.devices import loader_workers
from vitclassifier.errors import UserError
from vitclassifier.inference.loading import load_for_prediction, prediction_device
from vitclassifier.reporting.metrics import expected_calibration_error
from vitclassifier.reporting.report import write_report
from vitclassifier.training.distributed import World
from vitclassifier.training.loop import Run, evaluate


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
