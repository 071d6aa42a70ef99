"""Prediction: turn what the user gave (files, folders, globs) into image paths, run a loaded model
over them in batches, and report top-k labels with calibrated confidences."""
from __future__ import annotations

import glob
import json
import math
import sys
from pathlib import Path
from typing import TextIO

import torch
from torch.utils.data import DataLoader
from torchvision.transforms import v2

from vitclassifier.data.dataset import ImageFolderDataset, collate_skipping_bad
from vitclassifier.data.folders import list_images, utf8_safe
from vitclassifier.data.transforms import eval_transform
from vitclassifier.devices import autocast
from vitclassifier.files import atomic_write_text
from vitclassifier.inference.loading import LoadedModel
from vitclassifier.text import printable

UNKNOWN = "unknown"  # the answer below --min-confidence
NONE = "none"  # several labels per image: the answer when no label reaches its threshold


def expand_inputs(inputs: list[str]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Files, folders and globs -> (image paths in order, [(input, reason)] for inputs that match nothing)."""
    paths, missing = [], []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = list_images(path)
            paths += found
            if not found:
                missing.append((item, "folder has no image files"))
        elif path.is_file():
            paths.append(path)
        elif path.exists():  # a named pipe or a device: reading it would block for ever, or never end
            missing.append((item, "not a regular file (a pipe or a device), skipped"))
        elif glob.has_magic(item):
            matches = sorted(Path(m) for m in glob.glob(item, recursive=True) if Path(m).is_file())
            paths += matches
            if not matches:
                missing.append((item, "pattern matches no files"))
        else:
            missing.append((item, "file not found"))
    return list(dict.fromkeys(paths)), missing  # drop repeats, keep order


def tta_views(images: torch.Tensor) -> list[torch.Tensor]:
    """The views --tta averages over: the image, its mirror, its centre zoomed by 1/0.875, and that
    mirrored."""
    size = images.shape[-1]
    centre = v2.functional.center_crop(images, [round(size * 0.875)] * 2)
    zoomed = torch.nn.functional.interpolate(centre, size=(size, size), mode="bilinear", antialias=True)
    return [images, images.flip(-1), zoomed, zoomed.flip(-1)]


def predict(
    loaded: LoadedModel,
    paths: list[Path],
    top_k: int,
    batch_size: int,
    tta: bool = False,
    min_confidence: float = 0.0,
) -> tuple[list[dict], list[tuple[str, str]]]:
    """Top-k (label, confidence) for every readable image; unreadable ones come back as (path, reason).

    Confidences are softmax(logits / temperature), the model's calibration. ``label`` is the top
    label, or "unknown" when its confidence is below ``min_confidence``."""
    model, prep, labels, temperature, device = (
        loaded.model,
        loaded.prep,
        loaded.labels,
        loaded.temperature,
        loaded.device,
    )
    dataset = ImageFolderDataset([(path, 0) for path in paths], eval_transform(prep), prep.resize_size)
    loader = DataLoader(
        dataset, batch_size=batch_size, collate_fn=collate_skipping_bad, pin_memory=device.type == "cuda"
    )
    results, failures = [], []
    k = min(top_k, len(labels))
    with torch.inference_mode():
        for images, _, good_paths, bad in loader:
            failures += bad
            if images is None:
                continue
            images = images.to(device, non_blocking=True)
            with autocast(device, loaded.dtype):
                logits = [
                    model(pixel_values=view).logits.float()
                    for view in (tta_views(images) if tta else [images])
                ]
            probabilities = confidences(logits, temperature, loaded.multi_label)
            found = top_k_results(good_paths, probabilities.topk(k, dim=1), labels, min_confidence)
            results += with_label_sets(found, probabilities, loaded)
    return results, failures


def confidences(views: list[torch.Tensor], temperature: float, multi_label: bool = False) -> torch.Tensor:
    """The calibrated confidences softmax(logits / T), or for several labels per image each label's
    sigmoid(logits), averaged over the views (--tta): (batch, classes)."""
    if multi_label:
        return torch.stack([view.sigmoid() for view in views]).mean(dim=0)
    return torch.stack([(view / temperature).softmax(dim=1) for view in views]).mean(dim=0)


def ranked(views: list[torch.Tensor], temperature: float, k: int,
           multi_label: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``confidences``' top k: (confidences, class indices), each (batch, k). predict.py, the web page and
    --explain all rank with this."""
    return confidences(views, temperature, multi_label).topk(k, dim=1)


def with_label_sets(results: list[dict], probabilities: torch.Tensor, loaded: LoadedModel) -> list[dict]:
    """Several labels per image: each result's ``labels``, every label at or above its threshold (most
    probable first; empty: none), with ``label_confidences``; ``label`` names them ("none" for none)."""
    if not loaded.multi_label:
        return results
    chosen = probabilities >= torch.tensor(loaded.thresholds, device=probabilities.device)
    for result, row, on in zip(results, probabilities.tolist(), chosen.tolist()):
        picked = sorted((i for i, yes in enumerate(on) if yes), key=lambda i: -row[i])
        result["label"] = ", ".join(loaded.labels[i] for i in picked) or NONE
        result["labels"] = [loaded.labels[i] for i in picked]
        result["label_confidences"] = {loaded.labels[i]: round(row[i], 6) for i in picked}
    return results


def top_k_results(paths: list[str], top: tuple[torch.Tensor, torch.Tensor], labels: list[str],
                  min_confidence: float) -> list[dict]:
    """One result per image from ``ranked``'s answer: the top label ("unknown" below
    ``min_confidence``) and the top-k labels with their confidences."""
    confidences, indices = top
    return [
        {
            "path": path,
            "label": labels[index_row[0]] if conf_row[0] >= min_confidence else UNKNOWN,
            "predictions": [
                {"label": labels[i], "confidence": round(c, 6)} for c, i in zip(conf_row, index_row)
            ],
        }
        for path, conf_row, index_row in zip(paths, confidences.tolist(), indices.tolist())
    ]


def print_table(results: list[dict], file: TextIO = sys.stdout) -> None:
    """The results as text; labels and paths with control characters escaped (text.printable): a
    name from a model file or a file name must not drive the terminal or split the table."""
    width = max((len(printable(p["label"])) for r in results for p in r["predictions"]), default=5)
    for result in results:
        unsure = result.get("label") == UNKNOWN
        name = printable(utf8_safe(result["path"]))  # utf8_safe: a Latin-1 file name can be printed too
        print(f"{name}{'  -> unknown: no label is confident enough' if unsure else ''}{label_set(result)}",
              file=file)
        for rank, p in enumerate(result["predictions"], 1):
            # a model that outputs NaN still gets its table (nan%, no bar), as before
            bar = "#" * round(p["confidence"] * 20) if math.isfinite(p["confidence"]) else ""
            label = printable(p["label"])
            print(f"  {rank}. {label:<{width}}  {p['confidence'] * 100:6.2f}%  {bar}", file=file)


def label_set(result: dict) -> str:
    """Several labels per image: the labels at or above their thresholds with their probabilities."""
    if "labels" not in result:
        return ""
    found = ", ".join(f"{printable(name)} {p * 100:.1f}%" for name, p in result["label_confidences"].items())
    return f"  -> {found or NONE}"


def predictions_json(model_path: Path, results: list[dict], failures: list[tuple[str, str]]) -> str:
    """The --json report: the model, every result, every input that could not be predicted. Paths and
    reasons are valid UTF-8 whatever the file names (utf8_safe), so strict JSON parsers read it."""
    return json.dumps(
        {
            "model": utf8_safe(model_path),
            "results": [{**result, "path": utf8_safe(result["path"]), **safe_explanation(result)}
                        for result in results],
            "errors": [{"path": utf8_safe(path), "error": utf8_safe(reason)} for path, reason in failures],
        },
        indent=2,
    )


def safe_explanation(result: dict) -> dict:
    """--explain's file paths, valid UTF-8 as the rest of the report; nothing without --explain."""
    if "explanation" not in result:
        return {}
    return {"explanation": {name: utf8_safe(path) for name, path in result["explanation"].items()}}


def write_json(destination: str, report: str) -> None:
    """``-``: standard output; else a file, written atomically."""
    if destination == "-":
        print(report)
    else:
        atomic_write_text(Path(destination), report + "\n")
