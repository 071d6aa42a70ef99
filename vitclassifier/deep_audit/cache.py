"""The embedding cache: a second audit of the same files with the same model embeds nothing again.

One ``.npz`` file per model (named by its identity, embedding.weights_identity) in the audit's
output folder, holding each image's content hash, embedding and thumbnail vector. It is keyed by
content, not by path: a renamed or moved file is still found, an edited one is embedded again.
It is written through a temporary file and ``os.replace``, and checked before use (its model, its
shapes and types, a checksum over its arrays); a cache that fails any check is ignored, said so
in one line, and rebuilt: never trusted.
"""
from __future__ import annotations

import hashlib
import sys
import zipfile
from pathlib import Path
from typing import NamedTuple

import numpy as np
from tqdm import tqdm

from vitclassifier.deep_audit.embedding import THUMBNAIL, Embedder, content_hash, embed_samples
from vitclassifier.files import write_via_temp
from vitclassifier.text import printable

CACHE_PREFIX = "embeddings-"  # embeddings-<identity>.npz
HASH_BYTES = 16  # embedding.content_hash's digest size
THUMBNAIL_SIZE = THUMBNAIL * THUMBNAIL * 3


class Cached(NamedTuple):
    """A loaded cache: {content hash: row}, the rows' float16 embeddings and perceptual hashes."""
    rows: dict[bytes, int]
    vectors: np.ndarray
    thumbnails: np.ndarray

    @classmethod
    def empty(cls) -> Cached:
        return cls({}, np.zeros((0, 0), np.float16), np.zeros((0, THUMBNAIL_SIZE), np.float16))


def cache_path(folder: Path, identity: str) -> Path:
    return Path(folder) / f"{CACHE_PREFIX}{identity}.npz"


def _checksum(identity: str, hashes: np.ndarray, vectors: np.ndarray, thumbnails: np.ndarray) -> str:
    digest = hashlib.blake2b(identity.encode(), digest_size=16)
    for array in (hashes, vectors, thumbnails):
        digest.update(f"{array.dtype} {array.shape}".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def _checked(arrays, identity: str) -> Cached:
    """The entries of a loaded cache, if every check passes; ValueError saying which failed."""
    if str(arrays["identity"]) != identity:
        raise ValueError("it was made by another model")
    hashes, vectors, thumbnails = arrays["hashes"], arrays["vectors"], arrays["thumbnails"]
    if (hashes.dtype != np.uint8 or hashes.ndim != 2 or hashes.shape[1] != HASH_BYTES
            or vectors.dtype != np.float16 or vectors.ndim != 2 or len(vectors) != len(hashes)
            or thumbnails.dtype != np.float16 or thumbnails.shape != (len(hashes), THUMBNAIL_SIZE)):
        raise ValueError("its arrays have the wrong shapes or types")
    if str(arrays["checksum"]) != _checksum(identity, hashes, vectors, thumbnails):
        raise ValueError("its checksum does not match its content")
    if not (np.isfinite(vectors).all() and np.isfinite(thumbnails).all()):
        raise ValueError("it holds vectors that are not numbers")
    return Cached({bytes(key): row for row, key in enumerate(hashes)}, vectors, thumbnails)


def _refuse_inflating(path: Path) -> None:
    """ValueError for a cache whose zip directory lists a member larger than the whole file: ours are
    written uncompressed (np.savez), so only a hostile file inflates, e.g. 1.5 MB into 1.6 GB, before
    its checks could reject it. Read from the directory, before any member is loaded."""
    stored = path.stat().st_size
    with zipfile.ZipFile(path) as archive:
        for member in archive.infolist():
            if member.file_size > stored:
                raise ValueError(f"its member {member.filename} would inflate to {member.file_size} bytes "
                                 f"from a file of {stored} (caches are written uncompressed)")


def load_cache(path: Path, identity: str) -> Cached:
    """The cache of ``identity`` in ``path``; an empty one when there is none or it fails a check."""
    if not path.is_file():
        return Cached.empty()
    try:
        _refuse_inflating(path)
        with np.load(path, allow_pickle=False) as arrays:
            return _checked(arrays, identity)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
        print(f"note: ignoring the embedding cache {printable(path)} ({printable(error)}); embedding again",
              file=sys.stderr)
        return Cached.empty()


def save_cache(path: Path, identity: str, keys: list[bytes], vectors: np.ndarray,
               thumbnails: np.ndarray) -> None:
    """Write one row per content hash in ``keys`` atomically, with what load_cache checks."""
    hashes = np.frombuffer(b"".join(keys), dtype=np.uint8).reshape(len(keys), HASH_BYTES)
    vectors, thumbnails = vectors.astype(np.float16), thumbnails.astype(np.float16)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            checksum = _checksum(identity, hashes, vectors, thumbnails)
            np.savez(handle, identity=np.array(identity), hashes=hashes, vectors=vectors,
                     thumbnails=thumbnails, checksum=np.array(checksum))

    write_via_temp(path, write)


class Embedded(NamedTuple):
    """The embeddings of a data set's readable images."""
    readable: list[int]  # positions (in the samples given) of the images embedded
    vectors: np.ndarray  # (len(readable), D) float32
    thumbnails: np.ndarray  # (len(readable), THUMBNAIL_SIZE) float32 thumbnail vectors
    unreadable: list[tuple[int, str]]  # (position, reason)
    from_cache: int  # how many came from the cache


def cached_embeddings(embedder: Embedder, samples: list, folder: Path, batch_size: int) -> Embedded:
    """Embed ``samples`` (paths or dataset rows), taking what the cache in ``folder`` already has
    and writing the cache back (this data set's images only) when anything was new."""
    path = cache_path(folder, embedder.identity)
    cached = load_cache(path, embedder.identity)
    keys = [content_hash(sample) for sample in tqdm(samples, desc="hashing", unit="img", disable=None,
                                                     file=sys.stderr)]
    todo = [i for i, key in enumerate(keys) if key not in cached.rows]  # new, changed or unreadable
    fresh, unreadable = embed_samples(embedder, [samples[i] for i in todo], batch_size)
    found = {todo[position]: value for position, value in fresh.items()}
    found.update({i: (cached.vectors[cached.rows[key]], cached.thumbnails[cached.rows[key]])
                  for i, key in enumerate(keys) if key in cached.rows})
    readable = sorted(found)
    unreadable = [(todo[position], reason) for position, reason in unreadable]
    if not readable:
        return Embedded([], np.zeros((0, 0), np.float32), np.zeros((0, THUMBNAIL_SIZE), np.float32),
                        unreadable, 0)
    # float16, as the cache keeps them: a run from the cache computes exactly what the first run did
    vectors = np.array([found[i][0] for i in readable], np.float16)
    thumbnails = np.array([found[i][1] for i in readable], np.float16)
    if fresh:
        rows = {keys[i]: row for row, i in enumerate(readable)}  # equal files: one row
        save_cache(path, embedder.identity, list(rows), vectors[list(rows.values())],
                   thumbnails[list(rows.values())])
    return Embedded(readable, vectors.astype(np.float32), thumbnails.astype(np.float32), unreadable,
                    len(readable) - len(fresh))
