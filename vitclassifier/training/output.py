"""The output folder of a training run: whose it is, who is writing into it, whether it has room.

A run claims its --output-dir before the first epoch:
  * never inside --data, nor at or inside a folder its images are read from (a label file's may lie
    anywhere): its pictures would become training images;
  * one run at a time: an exclusive lock (flock) held until the run ends, released by the kernel even
    on a kill; a second run, or a --resume while the first still writes, gets one line naming it;
  * never over what is not ours: a folder that holds anything else than this tool's files, and no
    marker saying it is a run folder of ours, is refused, and nothing in it is touched;
  * never over a run silently: a folder with a finished or interrupted run is continued with
    --resume, or replaced with --overwrite (which removes only this tool's files), or refused;
  * enough free space for every checkpoint a run keeps at once, checked before training.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import time
from collections.abc import Iterable
from pathlib import Path

from vitclassifier.errors import UserError
from vitclassifier.files import atomic_write_text, refuse_among_inputs
from vitclassifier.model.checkpoint import is_complete_checkpoint
from vitclassifier.text import first_few

MARKER = ".vitclassifier-run.json"  # written into every output folder a run claims
LOCK = ".vitclassifier.lock"
CHECKPOINTS = ("best", "last")
REPORT_FILES = ("metrics.csv", "curves.png", "confusion_matrix.png", "confusion_matrix.csv", "per_class.csv",
                "mistakes.png")
TRACKING = ("mlruns", "tensorboard")  # experiment history: kept even by --overwrite
OURS = {MARKER, LOCK, *REPORT_FILES, *TRACKING, *(f"{name}{suffix}" for name in CHECKPOINTS
                                                   for suffix in ("", ".tmp", ".old"))}


class OutputLock:
    """An exclusive lock on the output folder for as long as this object lives (POSIX flock)."""

    def __init__(self, output_dir: Path):
        self.path = output_dir / LOCK
        self.created = not self.path.exists()  # removed again if the folder is refused
        # never through a link: a planted .vitclassifier.lock -> a file of the user's is refused
        descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
        self.handle = os.fdopen(descriptor, "r+")
        try:
            import fcntl
        except ImportError:  # Windows: no flock; one run at a time is then up to the user
            return
        try:
            fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.handle.seek(0)
            holder = self.handle.read().strip() or "another process"
            self.handle.close()
            raise UserError(f"--output-dir {output_dir} is in use by another training run ({holder}); wait "
                            f"for it to finish, or train into another --output-dir") from None
        self.handle.seek(0)
        self.handle.truncate()
        self.handle.write(f"pid {os.getpid()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}")
        self.handle.flush()

    def release(self) -> None:
        self.handle.close()

    def abandon(self) -> None:
        """Release, and remove the lock file if this run created it (a refused folder stays as it was)."""
        self.release()
        if self.created:
            self.path.unlink(missing_ok=True)


def is_our_metrics(path: Path) -> bool:
    try:
        with open(path, newline="") as handle:
            return next(csv.reader(handle), [])[:2] == ["epoch", "train_loss"]
    except (OSError, UnicodeDecodeError):
        return False


def foreign_entries(output_dir: Path) -> list[str]:
    """What in ``output_dir`` this tool did not write. With our marker: only names we never use.
    Without it (a folder from before the marker, or the user's own): also our names whose content
    is not ours, e.g. a best/ that is not a checkpoint."""
    entries = sorted(p.name for p in output_dir.iterdir())
    if (output_dir / MARKER).is_file():
        return []  # a run folder of ours: other files in it are left alone, never touched
    foreign = [name for name in entries if name not in OURS]
    foreign += [name for name in CHECKPOINTS if (output_dir / name).exists()
                and not is_complete_checkpoint(output_dir / name)]
    if (output_dir / "metrics.csv").exists() and not is_our_metrics(output_dir / "metrics.csv"):
        foreign.append("metrics.csv")
    has_run = any((output_dir / name).exists() for name in CHECKPOINTS)
    foreign += [name for name in REPORT_FILES[1:] if (output_dir / name).exists() and not has_run]
    return sorted(set(foreign))


def describe_run(output_dir: Path) -> str:
    info = output_dir / "best" / "training_info.json"
    try:
        best = json.loads(info.read_text())
        return f"a training run (best epoch {best['epoch']}, val acc {float(best['val_acc']):.3f})"
    except (OSError, ValueError, KeyError, TypeError):
        return "an interrupted training run"


def remove_our_files(output_dir: Path) -> None:
    """--overwrite: the previous run's checkpoints, metrics and pictures; nothing else."""
    for name in sorted(OURS - {MARKER, LOCK, *TRACKING}):
        path = output_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def check_free_space(output_dir: Path, needed_bytes: int) -> None:
    free = shutil.disk_usage(output_dir).free
    if free < needed_bytes:
        raise UserError(f"--output-dir {output_dir} has {free / 2**20:.0f} MiB free, but the checkpoints "
                        f"need about {needed_bytes / 2**20:.0f} MiB; free some space or pick another "
                        f"--output-dir")


def refuse_unclaimable(output_dir: Path, data_dir: Path | str, image_folders: Iterable[str | Path],
                       resuming: bool, overwrite: bool) -> None:
    """The refusals of claim_output_dir, read-only and without the lock: --recipe auto says them before
    its minutes of measurements, and the claim checks them again, locked, when the run starts."""
    refuse_among_data(output_dir, data_dir, image_folders)
    if output_dir.is_dir():
        refuse_foreign_or_old_run(output_dir, resuming, overwrite)


def claim_output_dir(output_dir: Path, data_dir: Path | str, image_folders: Iterable[str | Path],
                     resuming: bool, overwrite: bool, needed_bytes: int) -> OutputLock:
    """Check and lock ``output_dir`` for this run (see the module's docstring); returns the lock.
    ``image_folders``: the folders the data's images are read from."""
    refuse_among_data(output_dir, data_dir, image_folders)
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        lock = OutputLock(output_dir)
    except OSError as error:
        raise UserError(f"cannot write to --output-dir {output_dir}: {error.strerror or error}") from None
    try:
        claim_locked(output_dir, resuming, overwrite, needed_bytes)
    except BaseException:
        lock.abandon()
        raise
    return lock


def refuse_among_data(output_dir: Path, data_dir: Path | str, image_folders: Iterable[str | Path]) -> None:
    if isinstance(data_dir, Path) and output_dir.resolve().is_relative_to(data_dir.resolve()):  # not a URL
        raise UserError(f"--output-dir {output_dir} is inside --data {data_dir}: the run's pictures would "
                        f"become training images; choose a folder outside the data")
    refuse_among_inputs(output_dir, image_folders, "--output-dir", "an image folder of the data")


def refuse_foreign_or_old_run(output_dir: Path, resuming: bool, overwrite: bool) -> None:
    foreign = foreign_entries(output_dir)
    if foreign:
        raise UserError(f"--output-dir {output_dir} holds files this tool did not write "
                        f"({first_few(foreign)}); nothing was changed. Train into an empty or new "
                        f"--output-dir")
    has_run = any((output_dir / name).exists() for name in CHECKPOINTS)
    if has_run and not resuming and not overwrite:
        raise UserError(f"--output-dir {output_dir} already holds {describe_run(output_dir)}. Continue "
                        f"it with --resume, replace it with --overwrite, or train into another "
                        f"--output-dir")


def claim_locked(output_dir: Path, resuming: bool, overwrite: bool, needed_bytes: int) -> None:
    refuse_foreign_or_old_run(output_dir, resuming, overwrite)
    if not resuming and any((output_dir / name).exists() for name in CHECKPOINTS):
        remove_our_files(output_dir)  # --overwrite
    try:
        check_free_space(output_dir, needed_bytes)
        atomic_write_text(output_dir / MARKER, json.dumps({"tool": "vitclassifier", "claimed": time.time()}))
    except OSError as error:
        raise UserError(f"cannot write to --output-dir {output_dir}: {error.strerror or error}") from None
