"""The images to choose from and the images already labelled, and one pass of the model over the
pool that gives each image its calibrated probabilities, its embedding and its thumbnail vector.

The pool is a folder of unlabelled images (searched recursively), or a label file whose rows with
an empty label are the pool (its labelled rows are then labelled images). Images already labelled
may also come as ``--labelled DATA`` in any form train.py reads. The pool's pass runs the model
once per image (the probabilities need the model's head, which the embedding cache does not keep);
the labelled images need embeddings only and go through the deep audit's cache.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from vitclassifier.data.folders import list_images
from vitclassifier.data.labelfile import LABEL_FILE_SUFFIXES, pick_columns, read_rows, resolve_image
from vitclassifier.deep_audit.embedding import EmbedDataset, Embedder, batch_embeddings, collate
from vitclassifier.devices import loader_workers
from vitclassifier.errors import UserError
from vitclassifier.text import printable


class Scored(NamedTuple):
    """The pool's readable images and what the model makes of them (rows in the same order)."""
    paths: list[Path]
    probabilities: np.ndarray  # (N, C) float32, calibrated: softmax(logits / T)
    embeddings: np.ndarray  # (N, D) float32, the deep audit's embedding
    thumbnails: np.ndarray  # (N, THUMBNAIL_SIZE) float32
    unreadable: list[tuple[Path, str]]


def read_pool(pool: Path, image_column: str | None,
              label_column: str | None) -> tuple[list[Path], list[Path]]:
    """(unlabelled images, labelled images) of ``pool``: a folder (nothing labelled in it) or a label
    file (rows with an empty label, rows with one)."""
    if pool.is_dir():
        return list_images(pool), []
    if not (pool.is_file() and pool.suffix.lower() in LABEL_FILE_SUFFIXES):
        raise UserError(f"--suggest-labels {printable(pool)} is neither a folder of images nor a label file "
                        f"({', '.join(LABEL_FILE_SUFFIXES)}) whose unlabelled rows have an empty label")
    columns, rows = read_rows(pool)
    image, label, _ = pick_columns(columns, pool, image_column, label_column)
    unlabelled, labelled = [], []
    for row in rows:
        found = resolve_image(pool.parent, row.get(image, "")) if row.get(image) else None
        if found is not None and found.resolve().is_relative_to(pool.parent.resolve()):  # as labelfile.py
            (labelled if row.get(label, "") not in ("", "-1") else unlabelled).append(found)
    return unlabelled, labelled


def labelled_samples(data: Path | str | None, image_column: str | None, label_column: str | None) -> list:
    """The images of ``--labelled DATA`` (training and validation), as train.py reads them."""
    if data is None:
        return []
    from vitclassifier.data.sources import open_source
    source = open_source(data, "auto", 0.2, 42, image_column, label_column, min_classes=1)
    if source.streamed:
        raise UserError("--labelled: streamed shards cannot be read image by image; give the folder or label "
                        "file the shards were made from")
    return [sample for sample, _ in source.train() + source.val()]


def score_pool(embedder: Embedder, temperature: float, paths: list[Path], batch_size: int) -> Scored:
    """One pass of the embedder's model over ``paths``: probabilities, embeddings and thumbnails."""
    device = embedder.context.device
    loader = DataLoader(EmbedDataset(paths, embedder.prep), batch_size=batch_size, collate_fn=collate,
                        num_workers=loader_workers(None, device), pin_memory=device.type == "cuda")
    parts: dict[str, list] = {"indices": [], "probabilities": [], "embeddings": [], "thumbnails": []}
    unreadable = []
    with torch.inference_mode(), tqdm(total=len(paths), desc="scoring", unit="img", disable=None,
                                      file=sys.stderr) as progress:
        for pixels, thumbnails, indices, bad in loader:
            unreadable += [(paths[index], reason) for index, reason in bad]
            if pixels is not None:
                with embedder.context.autocast():
                    logits = embedder.model(pixel_values=pixels.to(device, non_blocking=True)).logits.float()
                parts["probabilities"].append((logits / temperature).softmax(dim=1).cpu().numpy())
                parts["embeddings"].append(batch_embeddings(embedder.features))
                parts["thumbnails"].append(np.asarray(thumbnails, np.float32))
                parts["indices"] += indices
            progress.update(len(indices) + len(bad))
    if not parts["indices"]:
        raise UserError(f"none of the {len(paths)} pool image(s) could be read")
    arrays = (np.concatenate(parts.pop(name)).astype(np.float32, copy=False)  # each batch freed once joined
              for name in ("probabilities", "embeddings", "thumbnails"))
    return Scored([paths[i] for i in parts["indices"]], *arrays, unreadable)
