"""After training: best/ evaluated once more on the whole validation set, calibrated, and every
picture and table of reporting/ written into the run's folder."""
from __future__ import annotations

from pathlib import Path

from torch.utils.data import DataLoader

from vitclassifier.model.checkpoint import fold_temperature, load_checkpoint, read_info, update_info
from vitclassifier.model.relevance import mistake_maps
from vitclassifier.model.vit import PRESETS
from vitclassifier.reporting.calibration import calibrate_run, calibration_line
from vitclassifier.reporting.model_card import write_model_card
from vitclassifier.reporting.multilabel import (
    PROBLEM_TYPE,
    fit_thresholds,
    multi_label_scores,
    scores_line,
    sigmoid,
    threshold_map,
    write_multi_label_report,
)
from vitclassifier.reporting.report import write_report
from vitclassifier.training.evaluate import EvalContext, evaluate
from vitclassifier.training.multilabel import evaluate_multi_label


def report_run(
    ctx: EvalContext, directory: Path, labels: list[str], val_loader: DataLoader, rows: list[dict], fit: bool,
    multi_label: bool = False,
) -> dict:
    """After training: evaluate best/ once more on the whole validation set, calibrate it (``fit``),
    fold the temperature into best/'s head (recorded in its training_info.json), and write every
    picture and table; mistakes.png shows where the model looked (model/relevance.py); then the model
    card best/README.md from training_info.json as it now is and the validation confusion matrix."""
    if multi_label:
        return report_multi_label(ctx, directory, labels, val_loader, rows)
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


def report_multi_label(ctx: EvalContext, directory: Path, labels: list[str], val_loader: DataLoader,
                       rows: list[dict]) -> dict:
    """Several labels per image: best/ scored once more, one threshold per class fitted on the validation
    set (F1-optimal) and recorded in best/training_info.json, which predict.py, the exports and the web
    page read; per_class.csv, curves.png and the model card."""
    model, _, _ = load_checkpoint(directory / "best")
    evaluation = evaluate_multi_label(ctx, model.to(ctx.device), val_loader, len(labels), "report",
                                      keep_outputs=True)
    if "logits" not in evaluation:
        return {}
    probs, targets = sigmoid(evaluation["logits"]), evaluation["labels"].numpy()
    thresholds = fit_thresholds(probs, targets)
    scores = multi_label_scores(probs, targets, thresholds)
    fitted = {"thresholds": threshold_map(labels, thresholds), "problem_type": PROBLEM_TYPE,
              "val_map": scores["map"], "val_micro_f1_thresholds": scores["micro_f1"],
              "val_exact_match_thresholds": scores["acc"]}
    update_info(directory / "best", **fitted)
    write_multi_label_report(directory, labels, scores, rows, probs, targets)
    print(scores_line(scores, evaluation))
    print(f"Thresholds per class in {directory}/best/training_info.json; tables and pictures: "
          f"{directory}/per_class.csv, pr_curves.png, curves.png")
    write_model_card(directory / "best", read_info(directory / "best"))
    return fitted
