"""``train.py --evaluate``: score a checkpoint, or any export of it, on a labelled folder, with the
metrics and pictures of a training run. The top of the library: it loads models as inference does
and evaluates them with training's evaluation pass."""
from __future__ import annotations

import sys
from pathlib import Path

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
from vitclassifier.reporting.report import write_report
from vitclassifier.training.evaluate import EvalContext, evaluate


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
    root, dataset = source.evaluation_source(loaded.labels, model_path, eval_transform(loaded.prep),
                                             loaded.prep.resize_size, data.batch_size)
    ctx = EvalContext(loaded.device, loaded.dtype)
    loader = DataLoader(
        dataset,
        batch_size=config.data.batch_size,
        collate_fn=collate_skipping_bad,
        num_workers=loader_workers(config.data.num_workers, loaded.device),
    )
    evaluation = evaluate(
        ctx, loaded.model, loader, len(loaded.labels), f"evaluating {root}", keep_outputs=True
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
    for path, reason in sorted(ctx.bad_files.items()):
        print(f"warning: skipped {path}: {reason}", file=sys.stderr)
    return evaluation
