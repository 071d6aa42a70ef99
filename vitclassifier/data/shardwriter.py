"""``classifier.py --to-shards DIR OUT``: a class folder written as WebDataset tar shards, so that a data
set that outgrew its folder streams (data/shards.py). The split is the one train.py makes (train/
and val/ folders, or the seeded stratified split), written as train-NNNNNN.tar and val-NNNNNN.tar
with an index.json (per-shard counts, per-class counts, the label map) that readers use instead of
counting. Samples are shuffled (seeded) before they are cut into shards, so each shard mixes the
classes. Every shard is written under a temporary name and then renamed; nothing in OUT that we
did not write is touched.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

from vitclassifier.data.folders import load_splits
from vitclassifier.data.images import file_bound, read_regular, too_many_bytes
from vitclassifier.data.shards import INDEX_NAME, require_webdataset
from vitclassifier.errors import UserError
from vitclassifier.files import atomic_write_text, refuse_inside, write_via_temp
from vitclassifier.text import printable

SHARD_NAME = "{role}-{number:06d}.tar"


def _refuse_unpackable(samples: list, source: Path) -> None:
    """Before a shard is written, refuse in one line a file that is a link out of the folder ``source``
    (a shard is made to be shared: what a link to /etc/passwd points to must not be packed into it)
    or over the byte bound (a 1.5 GB "image" would be read whole)."""
    root, bound = source.resolve(), file_bound()
    for image, _ in samples:
        target = image.resolve()
        if not target.is_relative_to(root):
            raise UserError(f"--to-shards: {printable(str(image))} is a link to {printable(str(target))}, "
                            f"outside {printable(str(source))}; shards pack only the folder's own files: "
                            f"copy the file in, or leave it out")
        size = target.stat().st_size
        if size > bound:
            raise UserError(f"--to-shards: {printable(str(too_many_bytes(str(image), size, bound)))}")


def _write_shard(path: Path, samples: list, labels: list[str], role: str, first: int) -> None:
    writer_class = require_webdataset().TarWriter

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as stream, writer_class(stream) as writer:
            for number, (image, label) in enumerate(samples, first):
                data = read_regular(image)  # a regular file, within the byte bound
                suffix = image.suffix.lower().lstrip(".") or "jpg"
                writer.write({"__key__": f"{role}{number:09d}", suffix: data, "cls": str(label).encode(),
                              "json": json.dumps({"label": labels[label]}).encode()})
    write_via_temp(path, write)


def write_role(out: Path, samples: list, labels: list[str], role: str, shard_size: int) -> tuple[list, dict]:
    """The shards of one role; returns their index entries and the per-class counts."""
    entries = []
    for number, start in enumerate(range(0, len(samples), shard_size)):
        name = SHARD_NAME.format(role=role, number=number)
        part = samples[start:start + shard_size]
        _write_shard(out / name, part, labels, role, start)
        entries.append({"name": name, "count": len(part)})
    classes = {name: sum(1 for _, label in samples if label == i) for i, name in enumerate(labels)}
    return entries, classes


def to_shards(source: Path, out: Path, val_split: float, seed: int, shard_size: int) -> dict:
    """Write the folder ``source`` as shards into ``out`` (created; must hold no shards yet)."""
    if shard_size < 1:
        raise UserError(f"--shard-size must be at least 1, got {shard_size}")
    refuse_inside(out, source, "--to-shards OUT", "the data folder")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"--to-shards OUT {out} already exists and is not an empty folder; give a new folder")
    labels, train, val = load_splits(source, val_split, seed)
    _refuse_unpackable([*train, *val], source)
    out.mkdir(parents=True, exist_ok=True)
    index = {"labels": labels, "source": str(source), "seed": seed, "val_split": val_split}
    for role, samples in (("train", train), ("val", val)):
        samples = list(samples)
        random.Random(f"{seed}/{role}").shuffle(samples)
        index[role], index[f"{role}_classes"] = write_role(out, samples, labels, role, shard_size)
    atomic_write_text(out / INDEX_NAME, json.dumps(index, indent=1) + "\n")
    return index
