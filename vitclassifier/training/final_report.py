"""After training: best/ evaluated once more on the whole validation set, calibrated, and every
picture and table of reporting/ written into the run's folder."""
from __future__ import annotations

from pathlib import Path

from torch.utils.data import DataLoader

from vitclassifier.model.checkpoint import fold_temperature, load_checkpoint, read_info
from vitclassifier.model.relevance import mistake_maps
from vitclassifier.model.vit import PRESETS
from vitclassifier.reporting.calibration import calibrate_run, calibration_line
from vitclassifier.reporting.model_card import write_model_card
from vitclassifier.reporting.report import write_report
from vitclassifier.training.evaluate import EvalContext, evaluate


def report_run(
    ctx: EvalContext, directory: Path, labels: list[str], val_loader: DataLoader, rows: list[dict], fit: bool
) -> dict:
    """After training: evaluate best/ once more on the whole validation set, calibrate it (``fit``),
    fold the temperature into best/'s head (recorded in its training_info.json), and write every
    picture and table; mistakes.png shows where the model looked (model/relevance.py); then the model
    card best/README.md from training_info.json as it now is and the validation confusion matrix."""
    model, prep, _ = load_checkpoint(directory / "best")
    evaluation = evaluate(ctx, model.to(ctx.device), val_loader, len(labels), "report", keep_outputs=True)
    if "logits" not in evaluation:
        return {}
    calibration = calibrate_run(evaluation, fit)
    fold_temperature(directory / "best", calibration)
    write_report(directory, labels, evaluation, calibration["temperature"], rows,
                 explain=lambda mistakes: mistake_maps(model, prep, mistakes, ctx.device, ctx.dtype))
    if fit:
        print(calibration_line(calibration, directory / "best"))
    print(f"Pictures and tables: {directory}/curves.png, confusion_matrix.png, per_class.csv, mistakes.png")
    info = read_info(directory / "best")  # last: it reads what fold_temperature recorded
    preset = PRESETS.get(str(info.get("model")))  # the card names a preset by its Hub id
    write_model_card(directory / "best", {**info, **({"hub_id": preset[0]} if preset else {})},
                     evaluation["confusion"])
    return calibration
