"""best/README.md: the model card of a run, in the Hugging Face format (a YAML header the Hub and
huggingface_hub.ModelCard read, then Markdown), so the checkpoint explains itself wherever it goes.

Every figure in it is a measured value handed in (training_info.json's dict, the validation confusion
matrix, the quick audit's report); a section whose values were not measured says so or is left out, and
nothing is claimed that the run did not measure. Names from the user's data (classes, folders) are
escaped so they render as plain text: no Markdown, no HTML, no terminal codes.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
import yaml

from vitclassifier.files import atomic_write_text
from vitclassifier.reporting.intervals import Interval, accuracy_interval, macro_f1_interval
from vitclassifier.reporting.metrics import per_class_scores
from vitclassifier.text import printable

CARD = "README.md"
CONFUSED_PAIRS = 5  # the most confused (true, predicted) pairs listed
WEAKEST = 3  # the classes with the lowest F1 listed
MARKDOWN_SPECIALS = re.compile(r"([\\`*_{}\[\]()#+\-.!|~^$:\"'=])")
HTML = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}


def text(name: object) -> str:
    """A user's name as Markdown that renders as exactly that text: control characters as escapes
    (errors.printable), HTML's three specials as entities, Markdown's punctuation backslash-escaped."""
    escaped = MARKDOWN_SPECIALS.sub(r"\\\1", printable(name))
    return "".join(HTML.get(char, char) for char in escaped)


def base_model(info: dict) -> str | None:
    """The Hub id the run started from (``hub_id``: a preset's, given by the caller, else the one typed),
    for the header's base_model; None from random weights, a local folder, or where training_info.json
    does not say it was pre-trained."""
    name = info.get("hub_id", info.get("model"))
    if not isinstance(name, str) or info.get("pretrained") is not True:
        return None
    is_hub_id = re.fullmatch(r"[\w.-]+/[\w.-]+", name) is not None and not Path(name).exists()
    return name if is_hub_id else None


def short_name(where: str) -> str:
    """A Hub id as it is; of a local path only its last part (the card may be published, the user's
    folders need not be)."""
    if where.startswith("hf:") or (re.fullmatch(r"[\w.-]+/[\w.-]+", where) and not Path(where).exists()):
        return where
    return Path(where).name or where


def data_name(info: dict) -> str:
    """What the run trained on, for the card."""
    source = info.get("data") if isinstance(info.get("data"), dict) else {}
    return short_name(str(source.get("data", ""))) or "unknown"


def metadata(info: dict, run_name: str) -> dict:
    """The YAML header: library, task, tags, base model and the validation metrics as model-index."""
    header = {"library_name": "transformers", "pipeline_tag": "image-classification",
              "tags": ["image-classification", "vision", "vit", "vitclassifier"]}
    base = base_model(info)
    if base:
        header["base_model"] = base
    metrics = []
    if isinstance(info.get("val_acc"), (int, float)):
        metrics.append({"type": "accuracy", "value": round(float(info["val_acc"]), 4),
                        "name": "Validation accuracy"})
    if isinstance(info.get("val_macro_f1"), (int, float)):
        metrics.append({"type": "f1", "value": round(float(info["val_macro_f1"]), 4),
                        "name": "Validation macro-F1", "args": {"average": "macro"}})
    if metrics:
        header["metrics"] = sorted({metric["type"] for metric in metrics})
        header["model-index"] = [{"name": printable(run_name), "results": [{
            "task": {"type": "image-classification", "name": "Image Classification"},
            "dataset": {"type": "imagefolder", "name": printable(data_name(info)), "split": "validation"},
            "metrics": metrics}]}]
    return header


def front_matter(header: dict) -> str:
    """The header as a YAML block: yaml.safe_dump quotes whatever a name holds, on one line each."""
    return "---\n" + yaml.safe_dump(header, sort_keys=False, allow_unicode=True, width=10**6) + "---\n"


def table(head: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head),
            *("| " + " | ".join(row) + " |" for row in rows), ""]


def data_section(info: dict, audit: dict | None, labels: list[str], support: np.ndarray | None) -> list[str]:
    """Counts per class (from the audit, else the validation support) and the audit's findings."""
    lines = ["## Data", "", f"Trained on {text(data_name(info))}"
             + (f": {info['train_images']} training and {info['val_images']} validation images."
                if "train_images" in info and "val_images" in info else "."), ""]
    if audit and isinstance(audit.get("classes"), dict):
        rows = [[text(name), str(counts.get("train", "")), str(counts.get("val", ""))]
                for name, counts in audit["classes"].items()]
        lines += table(["class", "train images", "validation images"], rows)
        findings = list(audit.get("fatal", [])) + list(audit.get("recommendations", []))
        lines += (["Findings of the data audit at the start of training:", ""]
                  + [f"- {text(finding)}" for finding in findings] + [""]
                  if findings else ["The data audit at the start of training found nothing to report.", ""])
    elif support is not None:
        rows = [[text(name), str(int(count))] for name, count in zip(labels, support)]
        lines += table(["class", "validation images"], rows)
        lines += ["The data audit's findings were not recorded.", ""]
    return lines


def recipe_section(info: dict) -> list[str]:
    """The model, the best epoch and every decision the run took, with its reason."""
    lines = ["## Training recipe", ""]
    if info.get("model"):
        model = text(short_name(str(info["model"])))
        lines.append(f"Fine-tuned from {model}." if info.get("pretrained") is True else
                     f"Trained from random weights, with {model}'s architecture." if info.get("pretrained")
                     is False else f"Model: {model} (whether it started from pre-trained weights was not "
                                   f"recorded).")
    if "epoch" in info:
        chosen = f", {info['weights']} weights" if info.get("weights") else ""
        select_by = text(info.get("select_by", "score"))
        lines.append(f"Best epoch {info['epoch']}, selected by validation {select_by}{chosen}.")
    lines.append("")
    recipe = info.get("recipe") if isinstance(info.get("recipe"), dict) else {}
    decisions = recipe.get("decisions")
    if recipe.get("recipe") == "fixed":
        lines += ["The fixed recipe (--recipe fixed): every option as typed, or its default.", ""]
    elif recipe.get("skipped"):
        lines += [f"The automatic recipe measured nothing: {text(recipe['skipped'])}.", ""]
    elif isinstance(decisions, list) and decisions:
        lines += ["The options the tool chose, and why:", ""]
        lines += table(["option", "value", "reason"],
                       [[text(d.get("option", "")), cell(d.get("value", "")), text(d.get("reason", ""))]
                        for d in decisions if isinstance(d, dict)])
    else:
        lines += ["The recipe's decisions were not recorded.", ""]
    return lines


def percent(interval: Interval | list) -> str:
    return Interval(*interval).percent()


def cell(value: object) -> str:
    """A decision's value: a number as it is, anything else (a name, a path) escaped."""
    return str(value) if isinstance(value, (int, float)) else text(value)


def validation_section(info: dict, macro_f1: Interval | None) -> list[str]:
    """Accuracy and macro-F1 with their 95% intervals; across folds and the linear probe where run."""
    lines = ["## Validation", ""]
    count = info.get("val_images")
    if isinstance(info.get("val_acc"), (int, float)) and isinstance(count, int) and count > 0:
        lines.append(f"- Accuracy: {percent(accuracy_interval(info['val_acc'], count))} on {count} images "
                     f"(Wilson interval)")
    if macro_f1 is not None:
        if isinstance(info.get("val_macro_f1"), (int, float)):  # as recorded; the matrix gives its spread
            macro_f1 = macro_f1._replace(value=float(info["val_macro_f1"]))
        lines.append(f"- Macro-F1: {percent(macro_f1)} (bootstrap over the validation images)")
    if isinstance(info.get("val_loss"), (int, float)):
        lines.append(f"- Loss: {info['val_loss']:.4f}")
    if isinstance(info.get("probe_val_acc"), (int, float)):
        lines.append(f"- Linear probe alone (a head fitted on frozen features): accuracy "
                     f"{info['probe_val_acc']:.1%}")
    folds = info.get("folds")
    if isinstance(folds, dict) and "acc" in folds:
        lines.append(f"- {folds['folds']}-fold cross-validation: accuracy {percent(folds['acc'])}, macro-F1 "
                     f"{percent(folds['macro_f1'])} (mean and Student t interval over the folds)")
    if len(lines) == 2:
        lines.append("Not measured.")
    return lines + [""]


def per_class_section(labels: list[str], confusion: torch.Tensor) -> list[str]:
    """Precision, recall and F1 of each class with its validation count, as per_class.csv has them."""
    scores = per_class_scores(confusion)
    rows = [[text(name), f"{scores['precision'][i]:.3f}", f"{scores['recall'][i]:.3f}",
             f"{scores['f1'][i]:.3f}", str(int(scores["support"][i]))] for i, name in enumerate(labels)]
    return ["## Per class (validation)", "", *table(["class", "precision", "recall", "F1", "images"], rows)]


def calibration_section(info: dict) -> list[str]:
    """The expected calibration error before and after the temperature, and what was done."""
    lines = ["## Calibration", ""]
    if not all(isinstance(info.get(key), (int, float)) for key in ("ece_before", "ece_after")):
        return lines + ["Not measured.", ""]
    folded = info.get("temperature_folded", info.get("temperature", 1.0))
    note = " (folded into the classification head: its confidences are the calibrated ones)"
    lines += [f"- Expected calibration error: {info['ece_before']:.1%} before, {info['ece_after']:.1%} after",
              f"- Temperature: {folded:.3f}" + (note if folded != 1 else "")]
    if info.get("calibration"):
        lines.append(f"- {text(info['calibration'])}")
    return lines + [""]


def mistakes_section(labels: list[str], confusion: torch.Tensor) -> list[str]:
    """The most confused (true, predicted) pairs and the classes with the lowest F1."""
    counts = confusion.clone()
    counts.fill_diagonal_(0)
    support = confusion.sum(1)
    pairs = [(int(counts[t, p]), t, p) for t in range(len(labels)) for p in range(len(labels))
             if counts[t, p] > 0]
    pairs.sort(key=lambda pair: (-pair[0], pair[1], pair[2]))
    lines = ["## Most confused classes", ""]
    if pairs:
        lines += table(["true class", "predicted as", "images", "share of the true class"],
                       [[text(labels[t]), text(labels[p]), str(n), f"{n / int(support[t]):.0%}"]
                        for n, t, p in pairs[:CONFUSED_PAIRS]])
    else:
        lines += ["No validation image was confused with another class.", ""]
    f1 = per_class_scores(confusion)["f1"]
    present = [i for i in range(len(labels)) if support[i] > 0]
    weakest = sorted(present, key=lambda i: (f1[i].item(), i))[:WEAKEST]
    lines += ["Weakest classes by F1: " + ", ".join(f"{text(labels[i])} ({f1[i]:.3f} on {int(support[i])} "
                                                    f"images)" for i in weakest), ""]
    return lines


def limits_section(info: dict, labels: list[str], support: torch.Tensor | None) -> list[str]:
    """What the measurements above do and do not cover, in this run's numbers."""
    lines = ["## Intended use and limits", "",
             f"- Sorts an image into one of {len(labels)} classes: " + ", ".join(map(text, labels))
             + ". It has no \"none of these\" answer: any image gets one of these labels."]
    count = info.get("val_images")
    if isinstance(info.get("val_acc"), (int, float)) and isinstance(count, int) and count > 0:
        interval = accuracy_interval(info["val_acc"], count)
        lines.append(f"- Measured on {count} validation images from the same source as the training images: "
                     f"the accuracy lies between {interval.low:.0%} and {interval.high:.0%} with 95% "
                     f"confidence. Images from elsewhere (other cameras, places, times) were not measured.")
    if support is not None and len(support) and support.min() < support.max():
        fewest = int(support.argmin())
        lines.append(f"- The smallest class in validation, {text(labels[fewest])}, has "
                     f"{int(support[fewest])} images: its figures are the least certain.")
    return lines + [""]


def card_text(info: dict, run_name: str, confusion: torch.Tensor | None, audit: dict | None) -> str:
    """The whole card: header, title, summary line and the sections above."""
    labels = [str(name) for name in info.get("labels", [])]
    support = confusion.sum(1) if confusion is not None else None
    measured = confusion is not None and int(confusion.sum()) > 0
    macro_f1 = macro_f1_interval(confusion.numpy()) if measured else None
    parts = [front_matter(metadata(info, run_name)), f"# {text(run_name)}", "",
             f"An image classifier (Vision Transformer) trained by vitclassifier on {text(data_name(info))}.",
             ""]
    parts += data_section(info, audit, labels, support)
    parts += recipe_section(info)
    parts += validation_section(info, macro_f1)
    if confusion is not None and len(labels) == len(confusion):
        parts += per_class_section(labels, confusion) + mistakes_section(labels, confusion)
    parts += calibration_section(info)
    if labels:
        parts += limits_section(info, labels, support)
    return "\n".join(parts)


def write_model_card(checkpoint_dir: Path, info: dict, confusion: object = None, audit: dict | None = None,
                     run_name: str | None = None) -> Path:
    """Write ``checkpoint_dir``/README.md atomically from ``info`` (training_info.json's dict), the
    validation ``confusion`` matrix of counts (rows: true class; a tensor, array or nested list) and the
    quick ``audit``'s report (data/audit.py); returns its path. ``run_name`` (default: the run folder's
    name) titles it."""
    checkpoint_dir = Path(checkpoint_dir)
    matrix = None if confusion is None else torch.as_tensor(np.asarray(confusion), dtype=torch.int64)
    name = run_name or checkpoint_dir.resolve().parent.name or "vitclassifier model"
    path = checkpoint_dir / CARD
    atomic_write_text(path, card_text(info, name, matrix, audit))
    return path
