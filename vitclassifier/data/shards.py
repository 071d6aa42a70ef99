"""WebDataset tar shards, streamed: ``--data 'shards/train-{000000..000099}.tar'`` (or the folder that
``classifier.py --to-shards`` wrote). Each sample is an image member plus a ``.cls`` (class index) or
``.json`` (``{"label": name}``) member with the same key. The ``webdataset`` package is optional.

Nothing is copied or cached: each epoch streams the shards once. What stays deterministic and exact:
- every shard belongs to one process (shard i to rank i % size), so each process reads only its own;
  every process takes the same number of images, the smallest share, so that all take the same steps
  (the last one may be smaller); what uneven shares leave out is said (TrainStream.uneven_note);
- the epoch's order: the process's shards in an order seeded by (seed, epoch), through a shuffle
  buffer seeded by (seed, epoch, rank); the same whatever the number of DataLoader workers (each
  worker reads the process's stream but decodes only its own batches, which the loader returns in
  order), so a resume with other --num-workers repeats the run;
- a resume skips the samples of the steps already taken, undecoded;
- a truncated shard is skipped from where it breaks, with a warning; the samples it lacks become
  unreadable entries, so that every process still takes the same number of steps.
Which shards, their counts and the label map: data/shardindex.py.
"""
from __future__ import annotations

import copy
import hashlib
import json
import random
import sys
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from torch.utils.data import IterableDataset, get_worker_info

from vitclassifier.data.images import DECODE_ERRORS, FileTooLarge, load_image
from vitclassifier.data.tarread import IMAGE_SUFFIXES, shard_members
from vitclassifier.errors import UserError
from vitclassifier.text import printable
from vitclassifier.urls import base_name, is_url, shown

INDEX_NAME = "index.json"
INSTALL = "pip install webdataset (or pip install -r requirements-extras.txt)"
SHUFFLE_BUFFER = 1000  # samples held for shuffling within a process's stream (encoded bytes)
CLS_DIGITS = 9  # a .cls of more digits is no class index (int() refuses 4300 digits, a traceback)
SHOWN = 5  # samples named when some are left out (then the count)
MISSING = "missing: a shard ended early (damaged or truncated, see above)"


def require_webdataset():
    try:
        import webdataset
    except ImportError:
        raise UserError(f"tar shards as --data need the webdataset package: {INSTALL}") from None
    return webdataset


def is_shards(path: Path | str) -> bool:
    """A brace pattern or a .tar file, or a folder holding an index.json beside .tar files; a URL
    (object store, web, pipe:) names shards always (urls.is_url)."""
    text = str(path)
    if is_url(path):
        return True
    return text.endswith(".tar") or ("{" in text and ".tar" in text) or (path / INDEX_NAME).is_file()


def key_hash(text: str) -> int:
    """A stable 63-bit number for a sample's name (its augmentation seed index, its hold-out draw)."""
    return int.from_bytes(hashlib.sha1(text.encode("utf-8", "surrogateescape")).digest()[:8], "big") >> 1


def held_out(key: str, seed: int, val_split: float) -> bool:
    """Whether a sample of shards without validation shards is a validation sample (seeded by its key)."""
    return key_hash(f"{seed}/{key}") % 1_000_000 < val_split * 1_000_000


def read_shard(path: str, warn: bool = True, broken: list | None = None):
    """The samples of one shard as (key, image bytes or None, {suffix: bytes}), read by
    tarread.shard_members (regular files only, members within the byte bound, a cut header noticed);
    a shard truncated or damaged mid-stream ends where it breaks, with a warning, and its path and
    reason are appended to ``broken``."""
    tariterators = require_webdataset().tariterators
    try:
        for sample in tariterators.group_by_keys(shard_members(path)):
            image = next((sample[s] for s in IMAGE_SUFFIXES if s in sample), None)
            yield sample["__key__"], image, sample
    except (OSError, EOFError, ValueError, tarfile.TarError) as error:
        if broken is not None:
            broken.append((path, shown(error)))
        if not warn:
            return
        if isinstance(error, FileTooLarge):
            print(f"warning: {shown(error)}; skipping the rest of the shard", file=sys.stderr)
        else:
            what, then = ("could not be read to its end", " (its samples count as unreadable)") \
                if is_url(path) else ("is damaged or truncated", "")
            print(f"warning: shard {shown(path)} {what} ({shown(error)}); skipping the rest of it{then}",
                  file=sys.stderr)


def label_of(sample: dict, labels: list[str] | None) -> str | None:
    """A sample's class name: from .json's "label" (a name, or an index into ``labels``), else .cls."""
    if "json" in sample:
        try:
            value = json.loads(sample["json"]).get("label")
        except (ValueError, AttributeError, RecursionError):  # not JSON, not an object, nested too deep
            value = None
        if isinstance(value, str):
            return value
        if isinstance(value, int) and not isinstance(value, bool) and labels and 0 <= value < len(labels):
            return labels[value]
    if "cls" in sample:
        text = sample["cls"].decode("utf-8", "replace").strip()
        if text.isdecimal() and len(text) <= CLS_DIGITS:
            return labels[int(text)] if labels and int(text) < len(labels) else text
    return None


@dataclass
class ShardSet:
    """The shards of one role (training or validation), their sample counts and the label map."""
    shards: list[str]
    counts: list[int]
    labels: list[str]
    class_counts: dict[str, int] = field(default_factory=dict)
    holdout: tuple[int, float, bool] | None = None  # (seed, val_split, keep held-out ones) without val shards
    indexed: bool = True  # labels from index.json (.cls is an index into them), else found by counting

    def label(self, sample: dict) -> str | None:
        return label_of(sample, self.labels if self.indexed else None)

    def keeps(self, key: str) -> bool:
        return self.holdout is None or held_out(key, self.holdout[0], self.holdout[1]) == self.holdout[2]

    def __len__(self) -> int:
        return sum(self.counts)

    def fingerprint(self) -> str:
        """Which shards with how many samples of which classes (a resume must see the same)."""
        text = json.dumps([[base_name(s) for s in self.shards], self.counts, self.labels, self.holdout])
        return hashlib.sha1(text.encode()).hexdigest()

    def label_list(self) -> list[int]:
        """Each sample's label index, in class order (what --class-weights auto counts)."""
        return [i for i, name in enumerate(self.labels) for _ in range(self.class_counts.get(name, 0))]


def named_left_out(shard: str, key: str, image: object, name: str | None,
                   labels: list[str] | None) -> str | None:
    """A sample left out (no image, no label, a label the index lacks) named with why, as the warning
    and --check-data's report name it; or None: it is kept."""
    if image is None:
        reason = "no image member"
    elif name is None:
        reason = "no label (.cls or .json)"
    elif labels is not None and name not in labels:
        reason = f"label {printable(name)!r} not in {INDEX_NAME}"
    else:
        return None
    return f"{printable(base_name(shard))}/{printable(key)}: {reason}"


def warn_left_out(where: str, left_out: list[str]) -> None:
    """The one warning for the samples of ``where`` that no command reads: the count, the first few."""
    if left_out:
        print(f"warning: {len(left_out)} sample(s) of {printable(where)} are left out (first: "
              f"{'; '.join(left_out[:SHOWN])})", file=sys.stderr)


@dataclass
class StreamPlan:
    """What one process streams in one epoch: its shards in order, how many samples, skipped how many."""
    shards: list[str]
    take: int
    skip: int = 0
    shuffle_seed: int | None = None


class ShardStream(IterableDataset):
    """The DataLoader's view of a ShardSet: items as ImageFolderDataset's,
    ``(pixels or None, label, name as text, reason or None)``. ``plan`` (set per epoch in the main
    process, before the loader starts its workers) says what this process streams."""

    def __init__(self, shard_set: ShardSet, transform, decode_size: int | None, batch_size: int):
        self.set, self.transform, self.decode_size = shard_set, transform, decode_size
        self.batch_size = batch_size
        self.index = {name: i for i, name in enumerate(shard_set.labels)}
        self.plan = StreamPlan(shard_set.shards, len(shard_set))
        self.every, self.offset = 1, 0  # validation: this process's share, every ``every``-th from ``offset``

    def __len__(self) -> int:
        return max(0, self.plan.take - self.plan.skip) // self.every

    def share(self, rank: int, size: int) -> ShardStream:
        """Process ``rank``'s share of this stream (every ``size``-th item): this one stays whole."""
        part = copy.copy(self)
        part.every, part.offset = size, rank
        return part

    def _samples(self):
        """(name, image bytes, label) of this process's stream in order, the shuffle buffer applied."""
        buffer, rng = [], random.Random(self.plan.shuffle_seed)
        for shard in self.plan.shards:
            for key, image, sample in read_shard(shard):
                name = self.set.label(sample)
                if image is None or name not in self.index or not self.set.keeps(key):
                    continue
                item = (f"{base_name(shard)}/{key}", image, self.index[name])
                if self.plan.shuffle_seed is None:
                    yield item
                    continue
                buffer.append(item)
                if len(buffer) >= SHUFFLE_BUFFER:
                    yield buffer.pop(rng.randrange(len(buffer)))
        rng.shuffle(buffer)
        yield from buffer

    def _decode(self, name: str, image: bytes, label: int):
        try:
            pixels = self.transform.decode(load_image(image, self.decode_size))
        except DECODE_ERRORS as error:
            return None, label, name, f"{type(error).__name__}: {error}"
        return self.transform.finish(pixels), label, name, None

    def __iter__(self):
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info else (1, 0)
        plan, samples = self.plan, self._samples()
        for position in range(plan.take):
            item = next(samples, None)  # None: the stream ended early (a truncated shard)
            mine = position - plan.skip
            if mine < 0 or mine % self.every != self.offset:
                continue
            if (mine // self.every // self.batch_size) % workers != worker:
                continue  # another worker's batch: read past, not decoded
            yield self._decode(*item) if item is not None else (None, 0, "shards", MISSING)


class TrainStream(ShardStream):
    """The training stream of one process, planned per epoch like EpochSampler (``steps``,
    ``set_epoch``, ``already_drawn``), so the training loop runs it unchanged."""

    def __init__(self, shard_set: ShardSet, transform, decode_size: int | None, batch_size: int,
                 per_step: int, epoch_seed: Callable[[int], int], rank: int = 0, size: int = 1):
        super().__init__(shard_set, transform, decode_size, batch_size)
        count = len(shard_set.shards)
        if count < size:
            raise UserError(f"{count} training shard(s) for {size} processes: every process needs a shard "
                            f"of its own; write more, smaller shards (--to-shards --shard-size)")
        self.shares = [sum(shard_set.counts[r::size]) for r in range(size)]
        take = min(self.shares)  # every process the same: the same steps, the same micro-batches
        if take < 1:
            raise UserError(f"a process has no training images in its shards ({size} processes, shard "
                            f"counts {shard_set.counts}): write more, smaller shards "
                            f"(--to-shards --shard-size)")
        self.left_out = sum(self.shares) - take * size  # per epoch, when the shares are uneven
        self.steps = -(-take // per_step)  # the last step of an epoch may be smaller, as EpochSampler's
        self.per_step, self.epoch_seed, self.take = per_step, epoch_seed, take
        self.own = list(range(rank, count, size))  # shard i belongs to process i % size
        self.rank = rank
        self.set_epoch(1)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Plan epoch ``epoch``: the own shards in a seeded order, the first ``start_batch`` steps skipped."""
        seed = self.epoch_seed(epoch)
        order = [self.set.shards[i] for i in self.own]
        random.Random(seed).shuffle(order)
        self.plan = StreamPlan(order, self.take, start_batch * self.per_step,
                               shuffle_seed=seed * 1009 + self.rank)

    def uneven_note(self) -> str | None:
        """What an uneven split of the shards over the processes leaves out of every epoch, or None."""
        if not self.left_out:
            return None
        return (f"note: the training shards split unevenly over {len(self.shares)} processes (images per "
                f"process: {', '.join(map(str, self.shares))}); every process takes {self.take} images an "
                f"epoch so that all take the same steps, so {self.left_out} of the {sum(self.shares)} "
                f"training images are left out of each epoch (the ends of the larger shares' streams, "
                f"others each epoch). Shards of equal size, a multiple of the processes in number, use all")

    def already_drawn(self) -> list[int]:
        return []  # every sample once per epoch: no repeated draws to count


class NameIndex(dict):
    """Training image name -> its index for the augmentation seeds (training/distributed.image_seed): for a
    stream, a stable hash of the name, so no list of every sample is kept."""

    def __missing__(self, name: str) -> int:
        return key_hash(name)
