"""The folder data set: samples decoded on demand, a bounded decode-once cache, and batching that
skips unreadable files instead of failing."""
from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from torch.utils.data import Dataset

from vitclassifier.data.images import DECODE_ERRORS, load_image, pixel_budget
from vitclassifier.data.transforms import TwoStage

FILL_CHUNK = 256  # images decoded ahead while filling the cache


class ImageFolderDataset(Dataset):
    """(path, label) samples decoded on demand. A file that fails to decode yields
    ``(None, label, path, reason)`` instead of raising, so one bad image never stops a run.

    ``transform`` is a TwoStage: its ``decode`` stage (decode, resize, crop) can be kept in a
    bounded uint8 cache by ``fill_cache``, so later epochs skip JPEG decoding; its ``finish`` stage
    (evaluation's float conversion and normalisation; nothing for training, whose batches are
    augmented on the device) runs on every access. Nothing here is random."""

    def __init__(self, samples: list[tuple[Path, int]], transform: TwoStage, decode_size: int | None = None):
        self.samples, self.transform, self.decode_size = samples, transform, decode_size
        pixel_budget()  # a bad $VIT_MAX_PIXELS is a UserError here, in the main process, not in a worker
        self.cache: dict[int, torch.Tensor | str] = {}  # index -> decoded uint8 pixels, or why it failed

    def __len__(self) -> int:
        return len(self.samples)

    def decode(self, index: int) -> torch.Tensor | str:
        """The cached or freshly decoded uint8 pixels of sample ``index``, or the reason it is unreadable."""
        if index in self.cache:
            return self.cache[index]
        try:
            return self.transform.decode(load_image(self.samples[index][0], self.decode_size))
        except DECODE_ERRORS as error:
            return f"{type(error).__name__}: {error}"

    def __getitem__(self, index: int):
        path, label = self.samples[index]
        pixels = self.decode(index)
        if isinstance(pixels, str):
            return None, label, str(path), pixels
        return self.transform.finish(pixels), label, str(path), None

    def fill_cache(self, max_bytes: int, num_threads: int = 1) -> tuple[int, int]:
        """Decode images once, on ``num_threads`` threads, into the cache until it holds ``max_bytes``;
        the rest is decoded on every access. Call it before the training loaders start their
        workers: they are forked from this process and share the cache. Returns (images cached,
        bytes used). Threads, not processes: Pillow and torch let go of the GIL while they decode
        and resize, and nothing has to be copied back (faster than worker processes: see
        docs/performance.md)."""
        used = 0
        with ThreadPoolExecutor(num_threads) as pool:
            try:
                for start in range(0, len(self), FILL_CHUNK):  # in chunks: stop once the budget is spent
                    indices = range(start, min(start + FILL_CHUNK, len(self)))
                    for index, pixels in zip(indices, pool.map(self.decode, indices)):
                        size = pixels.numel() if isinstance(pixels, torch.Tensor) else 0
                        if used + size > max_bytes:
                            return len(self.cache), used
                        self.cache[index] = pixels
                        used += size
            finally:  # a spent budget or Ctrl-C: the decodes not started yet are dropped, not waited for
                pool.shutdown(cancel_futures=True)
        return len(self.cache), used


def fill_caches(datasets: list[ImageFolderDataset], max_bytes: int) -> str:
    """Fill the datasets' caches in turn, decoding on every core, within ``max_bytes`` in all;
    says what it did."""
    start, used, cached = time.time(), 0, 0
    threads = min(8, os.cpu_count() or 1)  # nothing else runs yet
    for dataset in datasets:
        count, size = dataset.fill_cache(max_bytes - used, threads)
        cached, used = cached + count, used + size
    missed = sum(len(dataset) for dataset in datasets) - cached
    return (
        f"Decoded {cached} images once into a {used / 2**20:.0f} MiB cache in {time.time() - start:.1f}s"
        + (f"; {missed} more are decoded every epoch (raise --cache-mb)" if missed else "")
    )


def collate_skipping_bad(batch):
    """Stack the good samples. Returns (images, labels, their paths, [(bad path, reason)]);
    images and labels are None when the whole batch was bad."""
    good = [item for item in batch if item[0] is not None]
    bad = [(item[2], item[3]) for item in batch if item[0] is None]
    if not good:
        return None, None, [], bad
    return (
        torch.stack([item[0] for item in good]),
        torch.tensor([item[1] for item in good]),
        [item[2] for item in good],
        bad,
    )
