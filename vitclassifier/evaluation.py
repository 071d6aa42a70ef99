"""``train.py --evaluate``: score a checkpoint, or any export of it, on a labelled folder, with the
metrics and pictures of a training run. The top of the library: it loads models as inference does
and evaluates them with training's evaluation pass."""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from torch.utils.data import DataLoader

from vitclassifier.config import DataOptions, TrainConfig
from vitclassifier.data.dataset import ImageFolderDataset, collate_skipping_bad
from vitclassifier.data.folders import scan_class_folders, validation_folder
from vitclassifier.data.hfdata import VAL_SPLITS, open_splits_of
from vitclassifier.data.labelfile import VAL_VALUES, read_label_file
from vitclassifier.data.shards import ShardStream, open_shards
from vitclassifier.data.sources import detect_format, is_stream, load_source
from vitclassifier.data.transforms import eval_transform
from vitclassifier.devices import loader_workers
from vitclassifier.errors import UserError
from vitclassifier.export.files import is_export
from vitclassifier.inference.loading import load_for_prediction, prediction_device
from vitclassifier.model.relevance import mistake_maps
from vitclassifier.reporting.calibration import expected_calibration_error
from vitclassifier.reporting.report import write_report
from vitclassifier.text import printable
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


def relabelled(samples, found: list[str], labels: list[str], where: str, model_path: Path) -> list:
    """Samples of another form labelled by the model's label map; classes it lacks are refused."""
    unknown = sorted(set(found) - set(labels))
    if unknown:
        raise UserError(f"the classes of {where} don't match the checkpoint {model_path}: not in the "
                        f"checkpoint: {', '.join(map(printable, unknown[:10]))}")
    return [(ref, labels.index(found[label])) for ref, label in samples]


def source_samples(data: DataOptions, labels: list[str], model_path: Path):
    """--data in a form other than a folder: its validation part when it has its own split (a split
    column, a validation split, validation shards), else all of it. Shards come back as a stream."""
    where = str(data.folder)
    form = detect_format(data.folder, data.data_format)
    if form == "shards":
        found, train, val = open_shards(data.folder, data.val_split, 0)
        whole = val if val.holdout is None else dataclasses.replace(train, counts=[
            a + b for a, b in zip(train.counts, val.counts)], holdout=None)
        if unknown := sorted(set(found) - set(labels)):
            raise UserError(f"the classes of {where} don't match the checkpoint {model_path}: not in the "
                            f"checkpoint: {', '.join(map(printable, unknown[:10]))}")
        return where, dataclasses.replace(whole, labels=labels, indexed=False)
    if form == "labels":
        classes, splits = read_label_file(data.folder, data.image_column, data.label_column)
        found = sorted(classes)
        samples = [(p, i) for i, name in enumerate(found) for p in classes[name]
                   if not splits or splits[p] in VAL_VALUES]
        return where, relabelled(samples, found, labels, where, model_path)
    found, train, val = load_source(data.folder, data.val_split, 0, form, data.image_column,
                                    data.label_column)
    own = any(name in open_splits_of(data.folder) for name in VAL_SPLITS)
    return where, relabelled(val if own else train + val, found, labels, where, model_path)


def evaluate_checkpoint(config: TrainConfig, output_dir: Path | None = None) -> dict:
    """``train.py --evaluate``: score the checkpoint --model, or an export of one, on the labelled
    folder --data, with the same metrics and pictures as after training, loaded and run exactly as
    predict.py would. The pictures go to ``output_dir`` (default: beside the model)."""
    model_path = Path(config.model.name)
    loaded = load_for_prediction(
        model_path, prediction_device(model_path, config.runtime.device), config.runtime.precision
    )
    if detect_format(config.data.folder, config.data.data_format) == "folder":
        root, samples = evaluation_samples(config.data.folder, loaded.labels, model_path)
    else:
        root, samples = source_samples(config.data, loaded.labels, model_path)
    run = Run(loaded.model, loaded.model, loaded.device, loaded.dtype, World(), config.recipe)
    transform, size = eval_transform(loaded.prep), loaded.prep.resize_size
    dataset = (ShardStream(samples, transform, size, config.data.batch_size) if is_stream(samples)
               else ImageFolderDataset(samples, transform, size))
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
    explain = None if is_export(model_path) else (  # exports have no gradients: mistakes.png without maps
        lambda mistakes: mistake_maps(loaded.model, loaded.prep, mistakes, loaded.device, loaded.dtype))
    write_report(out, loaded.labels, evaluation, loaded.temperature, explain=explain)
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
