"""Prediction over many images (predict.py --out, --data): streamed batch by batch into the output
file (inference/outfile.py), so memory does not grow with the number of images, with a progress
bar, a table capped at its first rows, resumable, and under torchrun shared between processes.

What is predicted: --image's files, folders and globs, or --data in any form (data/sources.py), of
which the part ``train.py --evaluate`` scores (its validation part when it has one, else all),
labelled by the model's classes, so that the run can score it on the way.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from vitclassifier.data.dataset import ImageFolderDataset
from vitclassifier.data.folders import utf8_safe
from vitclassifier.data.sources import open_source
from vitclassifier.data.transforms import eval_transform
from vitclassifier.devices import autocast
from vitclassifier.errors import UserError
from vitclassifier.export.files import model_files
from vitclassifier.inference.loading import LoadedModel
from vitclassifier.inference.predict import expand_inputs, ranked, top_k_results, tta_views
from vitclassifier.urls import shown

TABLE_ROWS = 20  # the terminal shows the first rows; the rest are in --out
BARRIER_TIMEOUT = datetime.timedelta(hours=24)  # processes wait for the slowest at the end


@dataclass
class Inputs:
    """What a run predicts: a map-style data set (listed images) or a stream with ``share``."""
    dataset: Dataset
    where: str
    scored: bool  # labelled data: rows carry true_label and the run is scored
    digest: str  # which images, in which order, with which labels (a resume must see the same)
    missing: list[tuple[str, str]] = field(default_factory=list)  # inputs that matched no image


@dataclass
class World:
    """This process among the torchrun processes (one process: rank 0 of 1)."""
    rank: int = 0
    size: int = 1

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()


def join_world(device: str) -> tuple[World, str]:
    """Under torchrun: join the process group (gloo on CPUs, NCCL on GPUs, each process on the GPU
    of its LOCAL_RANK); returns the world and the device to ask for."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World(), device
    use_cuda = device in ("auto", "cuda") and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=BARRIER_TIMEOUT)
    device = "cuda" if use_cuda else "cpu" if device == "auto" else device
    return World(int(os.environ["RANK"]), size), device


def digest_of(names: Iterator[str]) -> str:
    hasher = hashlib.sha256()
    for name in names:
        hasher.update(name.encode("utf-8", "surrogateescape") + b"\n")
    return hasher.hexdigest()


def image_inputs(items: list[str], loaded: LoadedModel) -> Inputs:
    """--image: files, folders and globs, in the order predict.py has always listed them."""
    paths, missing = expand_inputs(items)
    dataset = ImageFolderDataset([(path, -1) for path in paths], eval_transform(loaded.prep),
                                 loaded.prep.resize_size)
    return Inputs(dataset, ", ".join(items), False, digest_of(map(str, paths)), missing)


def data_inputs(data: Path | str, form: str, columns: tuple[str | None, str | None], model: Path,
                loaded: LoadedModel, batch_size: int) -> Inputs:
    """--data: the images train.py --evaluate scores, labelled by the model's classes."""
    source = open_source(data, form, 0.2, 0, *columns)
    if source.task_line() == "multi-label":
        raise UserError(f"--data {shown(data)} has several labels per image: --data takes one class per "
                        f"image for now")
    where, dataset = source.evaluation_source(loaded.labels, model, eval_transform(loaded.prep),
                                              loaded.prep.resize_size, batch_size)
    if isinstance(dataset, ImageFolderDataset):
        digest = digest_of(f"{ref}\t{label}" for ref, label in dataset.samples)
    else:  # a stream: its source, its size and its fingerprint, without reading every sample
        digest = digest_of([str(data), str(len(dataset)), source.fingerprint()])
    return Inputs(dataset, where, True, digest)


def share_of(dataset: Dataset, world: World, done: int) -> Dataset:
    """This process's items (every ``size``-th from ``rank``), less the ``done`` first of them."""
    if isinstance(dataset, ImageFolderDataset):
        return ImageFolderDataset(dataset.samples[world.rank::world.size][done:], dataset.transform,
                                  dataset.decode_size)
    part = dataset.share(world.rank, world.size)  # a stream skips whole rounds: done x size items
    part.plan = replace(part.plan, skip=part.plan.skip + done * world.size)
    return part


def collate_in_order(batch: list) -> tuple[torch.Tensor | None, list]:
    """The readable images stacked, and every item's (name, label, reason or None) in input order."""
    good = [item[0] for item in batch if item[0] is not None]
    return (torch.stack(good) if good else None), [(name, label, reason) for _, label, name, reason in batch]


def model_stamp(model: Path) -> list:
    """Which model files, of which size and time: a retrained or replaced model is another run."""
    files = [f for path in model_files(model) if path.exists()
             for f in (sorted(path.iterdir()) if path.is_dir() else [path]) if f.is_file()]
    return [(str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in files]


def run_identity(model: Path, inputs: Inputs, options: dict) -> str:
    """What a --resume must find unchanged: the model, the images, the options that shape the rows."""
    text = json.dumps({"model": model_stamp(model), "inputs": inputs.digest, **options}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def batch_rows(loaded: LoadedModel, loader: DataLoader, k: int, tta: bool, min_confidence: float,
               scored: bool) -> Iterator[list[dict]]:
    """One row per item, batch by batch, in input order: the top-k, or the reason it is unreadable."""
    with torch.inference_mode():
        for images, items in loader:
            results = iter([])
            if images is not None:
                images = images.to(loaded.device, non_blocking=True)
                with autocast(loaded.device, loaded.dtype):
                    views = [loaded.model(pixel_values=view).logits.float()
                             for view in (tta_views(images) if tta else [images])]
                good = [name for name, _, reason in items if reason is None]
                results = iter(top_k_results(good, ranked(views, loaded.temperature, k), loaded.labels,
                                             min_confidence))
            yield [row_of(name, label, reason, results, loaded.labels if scored else None)
                   for name, label, reason in items]


def row_of(name: str, label: int, reason: str | None, results: Iterator[dict],
           labels: list[str] | None) -> dict:
    """The output row of one item (``results``: the next readable item's result)."""
    row = {"path": utf8_safe(name), "label": None, "labels": [], "confidences": [], "error": None}
    if reason is not None:
        row["error"] = utf8_safe(reason)
    else:
        result = next(results)
        row.update(label=result["label"], labels=[p["label"] for p in result["predictions"]],
                   confidences=[p["confidence"] for p in result["predictions"]])
    if labels is not None:
        row["true_label"] = labels[label]
    return row


def progress(total: int, world: World, resumed: int) -> tqdm:
    """The bar, in the main process: images over all processes, the rate and the time left."""
    return tqdm(total=total, initial=resumed, desc="predicting", unit="img", file=sys.stderr,
                disable=world.rank != 0, mininterval=1 if sys.stderr.isatty() else 30, dynamic_ncols=True)
