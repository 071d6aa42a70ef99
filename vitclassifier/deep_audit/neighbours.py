"""Nearest neighbours in embedding space, and the near-duplicate pairs among them.

Never all pairs at once: each image's k nearest neighbours are found a block of rows at a time
(a block's similarities to every image, then its top k), so memory is k per image plus one block.
From FAISS_FROM images on, faiss's exact inner-product search does the same work faster when it is
installed (benchmarks/audit.py search; figures in docs/audit.md); the results are the same.

A pair is a near-duplicate when its embeddings are alike (cosine similarity at or above the
threshold: the model sees the same thing), or when its thumbnail vectors are (the same picture,
resized, recompressed or slightly cut). Both searches look at each image's nearest neighbours only.
"""
from __future__ import annotations

import importlib.util
from typing import NamedTuple

import numpy as np
import torch

from vitclassifier.deep_audit.embedding import unit_rows

FAISS_FROM = 20_000  # from this many images faiss (when installed) searches instead of torch
CHUNK_ELEMENTS = 1 << 24  # similarities held at once by the torch search (64 MiB of float32)
FAISS_ROWS = 8192  # queries per faiss search call


class Neighbours(NamedTuple):
    """Row i's k most similar other rows, most similar first, and their cosine similarities."""
    indices: np.ndarray  # (N, k) int64
    similarities: np.ndarray  # (N, k) float32


class Pair(NamedTuple):
    first: int
    second: int
    cosine: float  # of the embeddings
    pixel_similarity: float  # cosine similarity of the thumbnail vectors


def nearest_neighbours(unit: np.ndarray, k: int) -> Neighbours:
    """Each row's ``k`` nearest other rows of ``unit`` (rows of length 1) by cosine similarity."""
    k = min(k, len(unit) - 1)
    if k < 1:
        return Neighbours(np.zeros((len(unit), 0), np.int64), np.zeros((len(unit), 0), np.float32))
    if len(unit) >= FAISS_FROM and importlib.util.find_spec("faiss"):
        return _faiss_search(unit, k)
    return _torch_search(unit, k)


def _torch_search(unit: np.ndarray, k: int) -> Neighbours:
    vectors = torch.from_numpy(np.ascontiguousarray(unit, dtype=np.float32))
    count = len(vectors)
    rows = max(1, CHUNK_ELEMENTS // count)
    indices, similarities = np.empty((count, k), np.int64), np.empty((count, k), np.float32)
    for start in range(0, count, rows):
        block = vectors[start:start + rows] @ vectors.T
        own = torch.arange(len(block))
        block[own, own + start] = -torch.inf  # an image is not its own neighbour
        values, found = block.topk(k, dim=1)
        indices[start:start + len(block)], similarities[start:start + len(block)] = found, values
    return Neighbours(indices, similarities)


def _faiss_search(unit: np.ndarray, k: int) -> Neighbours:
    import faiss
    unit = np.ascontiguousarray(unit, dtype=np.float32)
    index = faiss.IndexFlatIP(unit.shape[1])
    index.add(unit)
    parts_i, parts_s = [], []
    for start in range(0, len(unit), FAISS_ROWS):
        values, found = index.search(unit[start:start + FAISS_ROWS], k + 1)
        own = found == np.arange(start, start + len(found))[:, None]
        order = np.argsort(own, axis=1, kind="stable")[:, :k]  # itself last (an exact copy may tie first)
        parts_i.append(np.take_along_axis(found, order, 1))
        parts_s.append(np.take_along_axis(values, order, 1))
    return Neighbours(np.concatenate(parts_i).astype(np.int64), np.concatenate(parts_s))


def pixel_view(thumbnails: np.ndarray) -> np.ndarray:
    """Thumbnail vectors scaled to length 1, plus one dimension that is 1 for blank pictures (their
    thumbnails are zeros): blank pictures are alike, and unlike every picture with something in it,
    so a lone blank frame stands out; two blank pictures are never near-duplicates (near_duplicates)."""
    blank = ~thumbnails.any(axis=1)
    return np.hstack([unit_rows(thumbnails), blank[:, None].astype(np.float32)])


def _pairs_above(neighbours: Neighbours, threshold: float) -> set[tuple[int, int]]:
    """Pairs (a, b), a < b, of the neighbour lists' entries at or above ``threshold``."""
    rows, columns = np.nonzero(neighbours.similarities >= threshold)
    return {(int(min(a, b)), int(max(a, b))) for a, b in zip(rows, neighbours.indices[rows, columns])}


def near_duplicates(embeddings: np.ndarray, thumbnails: np.ndarray, threshold: float,
                    pixel_threshold: float, neighbours: Neighbours,
                    pixel_neighbours: Neighbours) -> list[Pair]:
    """Near-duplicate pairs (first < second), most alike first: embeddings (rows of length 1) at
    least ``threshold`` alike, or thumbnails (``pixel_view``) at least ``pixel_threshold``, among
    the nearest neighbours already found of each (``neighbours``, ``pixel_neighbours``)."""
    blank = thumbnails[:, -1] > 0  # pixel_view's mark
    found = _pairs_above(neighbours, threshold) | {
        (a, b) for a, b in _pairs_above(pixel_neighbours, pixel_threshold) if not (blank[a] and blank[b])}
    pairs = [Pair(a, b, float(embeddings[a] @ embeddings[b]), float(thumbnails[a, :-1] @ thumbnails[b, :-1]))
             for a, b in found]
    return sorted(pairs, key=lambda pair: (-max(pair.cosine, pair.pixel_similarity), pair.first, pair.second))
