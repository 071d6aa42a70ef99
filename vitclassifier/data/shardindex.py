"""Which shards make up --data given as shards, how many samples each holds, and the label map: from
``index.json`` when --to-shards wrote one (checked against the shards' headers), else from one scan
of the shards. Without validation shards, a seeded hash of each key holds out ``--val-split`` of the
samples (shards.held_out).
"""
from __future__ import annotations

import json
import tarfile
from pathlib import Path

from vitclassifier.data.remote import check_exist, read_small
from vitclassifier.data.shards import (
    INDEX_NAME,
    ShardSet,
    held_out,
    label_of,
    named_left_out,
    read_shard,
    require_webdataset,
    warn_left_out,
)
from vitclassifier.data.tarread import IMAGE_SUFFIXES, MAX_SHARDS, pattern_count, scan_shard
from vitclassifier.errors import UserError
from vitclassifier.text import printable
from vitclassifier.urls import PIPE, is_url, shown


def expand(pattern: str) -> list[str]:
    """The shard paths of a brace pattern (webdataset's own expansion), each one checked to exist (on a
    store: one listing per folder, remote.check_exist)."""
    if pattern_count(pattern) > MAX_SHARDS:
        raise UserError(f"--data {shown(pattern)} names {pattern_count(pattern)} shards, more than the "
                        f"{MAX_SHARDS} one pattern may name: check its {{first..last}} range")
    shards = list(require_webdataset().shardlists.expand_urls(pattern))
    if is_url(pattern):
        check_exist(shards, pattern)
        return shards
    missing = [s for s in shards if not Path(s).is_file()]
    if missing:
        raise UserError(f"--data {printable(pattern)}: {len(missing)} of its {len(shards)} shard(s) do not "
                        f"exist (first: {printable(missing[0])})")
    return shards


def _count(shards: list[str], seed: int, val_split: float) -> tuple[list[list[int]], list[dict]]:
    """Count once: per role (training, held-out validation), the samples of each shard and of each
    class; the samples left out are named (warn_left_out)."""
    counts, classes, left_out = [[], []], [{}, {}], []
    for shard in shards:
        found = [0, 0]
        for key, image, sample in read_shard(shard, warn=False):
            name = label_of(sample, None)
            if named := named_left_out(shard, key, image, name, None):
                left_out.append(named)
                continue
            role = int(held_out(key, seed, val_split))
            found[role] += 1
            classes[role][name] = classes[role].get(name, 0) + 1
        for role in (0, 1):
            counts[role].append(found[role])
    warn_left_out(f"{len(shards)} shard(s)", left_out)
    return counts, classes


def _label_order(name: str) -> tuple:
    """Class names sorted as text, but bare .cls numbers as numbers (2 before 10)."""
    return (not name.isdecimal(), int(name) if name.isdecimal() else 0, name)


def _join(folder: str, name: str) -> str:
    """A file of the folder: a URL's query (a signed URL's token) goes on every object's URL."""
    if not is_url(folder):
        return str(Path(folder) / name)
    plain, _, query = folder.partition("?")
    return f"{plain}/{name}" + (f"?{query}" if query else "")


def _same(shard: str) -> str:
    """A shard path as the index's are joined (a local one normalised), to compare them."""
    return shard if is_url(shard) else str(Path(shard))


def _read_index(folder: str) -> bytes | None:
    """The index.json of a folder (local or on a store), or None where it has none."""
    where = _join(folder, INDEX_NAME)
    if is_url(folder):
        return read_small(where)
    try:
        return Path(where).read_bytes() if Path(where).is_file() else None
    except OSError as error:
        raise UserError(f"{printable(where)} is not a shard index written by --to-shards "
                        f"({printable(error)}): remove it, or write the shards again") from None


def _from_index(text: bytes, folder: str, pattern_shards: list[str] | None
                ) -> tuple[ShardSet, ShardSet] | None:
    """The training and validation sets --to-shards described, if the given shards are its training
    ones. The index of shards on a store is not checked against them (that would download them all):
    a shard that ends early is then found by the readers, as a truncated one."""
    where = _join(folder, INDEX_NAME)
    try:
        index = json.loads(text)
        labels = [str(name) for name in index["labels"]]
        roles = {role: [(_join(folder, _plain(e["name"])), int(e["count"])) for e in index[role]]
                 for role in ("train", "val")}
        class_counts = {role: {str(k): int(v) for k, v in index.get(f"{role}_classes", {}).items()}
                        for role in roles}
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise UserError(f"{shown(where)} is not a shard index written by --to-shards ({printable(error)}): "
                        f"remove it, or write the shards again") from None
    if pattern_shards is not None and sorted(map(_same, pattern_shards)) != sorted(
            s for s, _ in roles["train"]):
        return None
    sets = [ShardSet([s for s, _ in roles[r]], [c for _, c in roles[r]], labels, class_counts[r])
            for r in ("train", "val")]
    if not is_url(folder):
        _check_index(Path(where), sets)
    return sets[0], sets[1]


def _plain(name: object) -> str:
    """A shard name of index.json: a file name beside it, never a path elsewhere."""
    if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
        raise ValueError(f"shard name {name!r} is not a file name beside the index")
    return name


def _check_index(index_path: Path, sets: list[ShardSet]) -> None:
    """Refuse an index whose counts disagree with its shards (a header scan, no image read: an index
    that undercounts would leave images out of every epoch, one that overcounts run empty steps);
    name the samples no command reads. A shard that cannot be scanned (cut, damaged, not a regular
    file) is left to the readers, which say so when they reach it."""
    left_out = []
    for part in sets:
        for shard, count in zip(part.shards, part.counts):
            try:
                samples = scan_shard(shard)
            except (OSError, EOFError, ValueError, tarfile.TarError):
                continue
            kept = 0
            for key, members in samples.items():
                image = next((True for s in IMAGE_SUFFIXES if s in members), None)
                named = named_left_out(shard, key, image, part.label(members), part.labels)
                if named:
                    left_out.append(named)
                kept += named is None
            if kept != count:
                raise UserError(f"{index_path} says {printable(Path(shard).name)} holds {count} sample(s), "
                                f"but it holds {kept}: the index does not match its shards; write them "
                                f"again (--to-shards), or remove {INDEX_NAME} so that they are counted")
    warn_left_out(str(index_path.parent), left_out)


def open_shards(path: Path | str, val_split: float, seed: int) -> tuple[list[str], ShardSet, ShardSet]:
    """(labels, training set, validation set) of --data given as shards: local ones, or a URL
    (urls.is_url) of a store's folder or shard pattern, or pipe: commands (no index for those)."""
    text = str(path)
    whole = (".tar" not in text and not text.startswith(PIPE)) if is_url(path) else path.is_dir()
    if is_url(path):
        plain, _, query = text.partition("?")
        folder = (plain.rstrip("/") if whole else plain.split("{")[0].rsplit("/", 1)[0]) + (
            f"?{query}" if query else "")
    else:
        folder = text if whole else str(Path(text.split("{")[0]).parent)
    shards = None if whole else expand(text)
    index = None if text.startswith(PIPE) else _read_index(folder)
    if index is not None:
        found = _from_index(index, folder, shards)
        if found is not None:
            return found[0].labels, *found
    if shards is None:
        raise UserError(f"--data {shown(text)}: no {INDEX_NAME} in it; give the shards as a pattern, e.g. "
                        f"'{shown(text)}/train-{{000000..000009}}.tar'")
    print(f"Counting the samples of {len(shards)} shard(s) once (no {INDEX_NAME} from --to-shards "
          f"beside them)")
    counts, classes = _count(shards, seed, val_split)
    labels = sorted(set(classes[0]) | set(classes[1]), key=_label_order)
    if len(labels) < 2:
        raise UserError(f"--data {shown(text)}: the shards hold {len(labels)} class(es) with images "
                        f"(labels from .cls or .json members); training needs at least two")
    train, val = (ShardSet(shards, counts[role], labels, classes[role], (seed, val_split, bool(role)),
                           indexed=False) for role in (0, 1))
    return labels, train, val
