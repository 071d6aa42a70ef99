"""``train.py --evaluate``: score a checkpoint, or any export of it, on a labelled folder, with the
metrics and pictures of a training run. The top of the library: it loads models as inference does
and evaluates them with training's evaluation pass."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from torch.utils.data import DataLoader

from vitclassifier.config import TrainConfig
from vitclassifier.data.dataset import collate_skipping_bad
from vitclassifier.data.sources import open_source
from vitclassifier.data.transforms import eval_transform
from vitclassifier.devices import loader_workers
from vitclassifier.errors import UserError
from vitclassifier.export.files import is_export
from vitclassifier.inference.loading import load_for_prediction, prediction_device
from vitclassifier.model.relevance import mistake_maps
from vitclassifier.reporting.calibration import expected_calibration_error
from vitclassifier.reporting.multilabel import sigmoid, write_multi_label_report
from vitclassifier.reporting.report import write_report
from vitclassifier.training.evaluate import EvalContext, evaluate
from vitclassifier.training.multilabel import evaluate_multi_label
from vitclassifier.urls import shown


def evaluate_checkpoint(config: TrainConfig, output_dir: Path | None = None) -> dict:
    """``train.py --evaluate``: score the checkpoint --model, or an export of one, on the labelled
    folder --data, with the same metrics and pictures as after training, loaded and run exactly as
    predict.py would. The pictures go to ``output_dir`` (default: beside the model)."""
    model_path = Path(config.model.name)
    loaded = load_for_prediction(
        model_path, prediction_device(model_path, config.runtime.device), config.runtime.precision
    )
    data = config.data
    source = open_source(data.folder, data.data_format, data.val_split, 0, data.image_column,
                         data.label_column, task=data.task, separator=data.label_separator)  # seed: no effect
    if (source.task_line() == "multi-label") != loaded.multi_label:
        kinds = ("one class", "several labels") if loaded.multi_label else ("several labels", "one class")
        raise UserError(f"--data {shown(data.folder)} has {kinds[0]} per image but the model {model_path} "
                        f"gives {kinds[1]}: evaluate it on data of its own kind")
    root, dataset = source.evaluation_source(loaded.labels, model_path, eval_transform(loaded.prep),
                                             loaded.prep.resize_size, data.batch_size)
    ctx = EvalContext(loaded.device, loaded.dtype)
    loader = DataLoader(
        dataset,
        batch_size=config.data.batch_size,
        collate_fn=collate_skipping_bad,
        num_workers=loader_workers(config.data.num_workers, loaded.device),
    )
    score = evaluate_multi_label if loaded.multi_label else evaluate
    evaluation = score(ctx, loaded.model, loader, len(loaded.labels), f"evaluating {root}", keep_outputs=True,
                       **({"thresholds": np.array(loaded.thresholds)} if loaded.multi_label else {}))
    if "logits" not in evaluation:
        raise UserError(f"no readable image in {root}")
    out = output_dir or Path(f"{model_path.resolve()}-evaluation")
    if loaded.multi_label:
        return report_multi_label(root, out, loaded.labels, evaluation, ctx.bad_files)
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
    for path, reason in sorted(ctx.bad_files.items()):
        print(f"warning: skipped {path}: {reason}", file=sys.stderr)
    return evaluation


def report_multi_label(root: str, out: Path, labels: list[str], evaluation: dict, bad_files: dict) -> dict:
    """Several labels per image, scored at the model's own thresholds: per_class.csv and one line."""
    write_multi_label_report(out, labels, evaluation, None, sigmoid(evaluation["logits"]),
                             evaluation["labels"].numpy())
    print(f"{root}: {evaluation['count']} images | loss {evaluation['loss']:.4f} mAP {evaluation['map']:.3f} "
          f"micro-F1 {evaluation['micro_f1']:.3f} macro-F1 {evaluation['macro_f1']:.3f} exact match "
          f"{evaluation['acc']:.3f} (at the model's thresholds)\nTables: {out}/per_class.csv")
    for path, reason in sorted(bad_files.items()):
        print(f"warning: skipped {path}: {reason}", file=sys.stderr)
    return evaluation
