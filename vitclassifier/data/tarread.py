"""The one way a tar shard is read (data/shards.py streams it, --check-data audits it, an index is
checked against it): a URL through data/remote.py (retried), a local one opened as a regular file
only (a named pipe named by index.json would block for ever), every member read with the byte bound
(images.file_bound: a 1.5 MB gzip shard may inflate to gigabytes, a sparse member claim any size),
and an end that is not the end-of-archive blocks (a shard cut inside a member header) reported as
truncation instead of taken for a normal end.
"""
from __future__ import annotations

import re
import tarfile
from collections.abc import Iterator

from vitclassifier.data.images import IMAGE_EXTENSIONS, file_bound, open_regular, read_bounded, too_many_bytes
from vitclassifier.data.remote import open_remote
from vitclassifier.urls import is_url

IMAGE_SUFFIXES = tuple(ext.lstrip(".") for ext in IMAGE_EXTENSIONS)
META = re.compile(r"__[^/]*__($|/)")  # webdataset's meta members (__key__ ...), skipped as it does
KEY_AND_SUFFIX = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")  # webdataset's base_plus_ext
CUT = "it ends inside a member header, not with the end-of-archive blocks (cut short while written?)"


class _Checked(tarfile.TarInfo):
    """A TarInfo that notes on its archive the header error that ended it: only the end-of-archive
    blocks (EOFHeaderError) are a proper end; tarfile takes a cut or garbled header for one too."""

    @classmethod
    def fromtarfile(cls, archive: tarfile.TarFile) -> tarfile.TarInfo:
        try:
            return super().fromtarfile(archive)
        except tarfile.HeaderError as error:
            archive.ended_by = error
            raise


def _regular_members(archive: tarfile.TarFile, shard: str, bound: int) -> Iterator[tarfile.TarInfo]:
    """The archive's regular, non-meta members, each refused (FileTooLarge) over ``bound`` bytes before
    it is read; then a ReadError if the archive did not end properly."""
    for info in archive:
        if info.isreg() and not META.match(info.name):
            if info.size > bound:
                raise too_many_bytes(f"member {info.name} of shard {shard}", info.size, bound)
            yield info
        archive.members = []  # a stream: keep no list of every member
    if not isinstance(getattr(archive, "ended_by", None), tarfile.EOFHeaderError):
        raise tarfile.ReadError(CUT)


def shard_members(path: str) -> Iterator[dict]:
    """{"fname", "data", "__url__"} of each member of the shard ``path`` in order (what webdataset's
    group_by_keys groups into samples), each read whole within the byte bound."""
    bound = file_bound()
    with (open_remote(path) if is_url(path) else open_regular(path)) as file:
        archive = tarfile.open(fileobj=file, mode="r|*", tarinfo=_Checked)
        for info in _regular_members(archive, path, bound):
            data = read_bounded(archive.extractfile(info), f"member {info.name} of shard {path}", info.size)
            yield {"fname": info.name, "data": data, "__url__": path}


def key_of(name: str) -> tuple[str | None, str]:
    """(sample key, lower-case suffix) of a member name, as webdataset splits it."""
    match = KEY_AND_SUFFIX.match(name)
    return (match.group(1), match.group(2).lower()) if match else (None, "")


def scan_shard(path: str) -> dict[str, dict[str, bytes | None]]:
    """Each key of an uncompressed shard with its members: label members (.cls, .json) read, image
    members only named (None), from the headers, seeking past their data. Raises what reading the
    shard would (OSError, tarfile.ReadError for a cut or damaged one)."""
    bound, samples = file_bound(), {}
    with open_regular(path) as file:
        archive = tarfile.open(fileobj=file, mode="r:", tarinfo=_Checked)
        for info in _regular_members(archive, path, bound):
            key, suffix = key_of(info.name)
            if key is None:
                continue
            wanted = suffix in ("cls", "json")
            samples.setdefault(key, {})[suffix] = (
                read_bounded(archive.extractfile(info), f"member {info.name} of shard {path}", info.size)
                if wanted else None)
    return samples


MAX_SHARDS = 100_000  # the most shards one brace pattern may name (far more than any data set has)
RANGE = re.compile(r"\{(\d+)\.\.(\d+)\}")
CHOICES = re.compile(r"\{([^{}]*,[^{}]*)\}")


def pattern_count(pattern: str) -> int:
    """How many paths a brace pattern names ({000..099} ranges, {a,b} choices), counted without
    expanding it: ``{0000000000..9999999999}`` is ten billion names, a MemoryError when listed."""
    count = 1
    for first, last in RANGE.findall(pattern):
        count *= abs(int(last) - int(first)) + 1
    for choices in CHOICES.findall(pattern):
        count *= choices.count(",") + 1
    return count
