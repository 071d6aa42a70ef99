"""Writing files so that nothing is ever half-written: a temporary name first, then ``os.replace``."""
from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through ``path.tmp`` and a rename: readers see the old file or the new."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "w", newline="") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def recover_interrupted_save(directory: Path) -> None:
    """A crash between atomic_write_dir's two renames leaves the previous directory complete in
    NAME.old and nothing at NAME: put it back."""
    directory = Path(directory)
    old = directory.with_name(directory.name + ".old")
    if not directory.exists() and old.is_dir():
        old.rename(directory)


def fsync_dir(directory: Path) -> None:
    """Make a rename inside ``directory`` durable (on POSIX; Windows has no directory fsync)."""
    if os.name == "posix":
        handle = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(handle)
        finally:
            os.close(handle)


def atomic_write_dir(directory: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp_dir)``, then swap tmp_dir into ``directory`` with renames. A crash never
    leaves a half-written directory under ``directory``: during the two renames the complete old
    one sits in ``NAME.old`` (put back by recover_interrupted_save) and the new one in ``NAME.tmp``.
    If writing fails (disk full, ...), the temporary copy is removed and the old one stays."""
    directory = Path(directory)
    recover_interrupted_save(directory)
    tmp, old = directory.with_name(directory.name + ".tmp"), directory.with_name(directory.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        write(tmp)
        for file in tmp.iterdir():
            with open(file, "rb") as handle:
                os.fsync(handle.fileno())
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if directory.exists():
        shutil.rmtree(old, ignore_errors=True)
        directory.rename(old)
    tmp.rename(directory)
    fsync_dir(directory.parent)
    shutil.rmtree(old, ignore_errors=True)
