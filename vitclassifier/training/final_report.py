"""After training: best/ evaluated once more on the whole validation set, calibrated, and every
picture and table of reporting/ written into the run's folder."""
from __future__ import annotations

from pathlib import Path

from torch.utils.data import DataLoader

from vitclassifier.model.checkpoint import load_checkpoint, update_info
from vitclassifier.reporting.report import calibrate, write_report
from vitclassifier.training.loop import Run, evaluate


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
