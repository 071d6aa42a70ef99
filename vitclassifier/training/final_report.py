"""After training: best/ evaluated once more on the whole validation set, calibrated, and every
picture and table of reporting/ written into the run's folder."""
from __future__ import annotations

from pathlib import Path

from torch.utils.data import DataLoader

from vitclassifier.cli import printable
from vitclassifier.model.checkpoint import fold_temperature, load_checkpoint
from vitclassifier.model.relevance import mistake_maps
from vitclassifier.reporting.report import calibrate, write_report
from vitclassifier.training.evaluate import EvalContext, evaluate


def report_run(
    ctx: EvalContext, directory: Path, labels: list[str], val_loader: DataLoader, rows: list[dict], fit: bool
) -> dict:
    """After training: evaluate best/ once more on the whole validation set, calibrate it (``fit``),
    fold the temperature into best/'s head (recorded in its training_info.json), and write every
    picture and table; mistakes.png shows where the model looked (model/relevance.py)."""
    model, prep, _ = load_checkpoint(directory / "best")
    evaluation = evaluate(ctx, model.to(ctx.device), val_loader, len(labels), "report", keep_outputs=True)
    if "logits" not in evaluation:
        return {}
    calibration = calibrate(evaluation) if fit else {"temperature": 1.0, "calibration": "--no-calibrate"}
    fold_temperature(directory / "best", calibration)
    write_report(directory, labels, evaluation, calibration["temperature"], rows,
                 explain=lambda mistakes: mistake_maps(model, prep, mistakes, ctx.device, ctx.dtype))
    if fit:
        folded = (f". Folded into {printable(directory / 'best')}'s head: every tool that loads it gives "
                  f"these confidences" if calibration["temperature"] != 1.0 else "")
        print(f"Calibration: {calibration['calibration']}; expected calibration error "
              f"{calibration['ece_before'] * 100:.1f}% -> {calibration['ece_after'] * 100:.1f}%{folded}")
    print(f"Pictures and tables: {directory}/curves.png, confusion_matrix.png, per_class.csv, mistakes.png")
    return calibration
