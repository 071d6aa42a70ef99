"""Never lose work: stopping on a signal, and continuing an interrupted run exactly.

A run is a pure function of its options, its data and (seed, epoch, step): the shuffling of
epoch e is seeded by (seed, e), each image's augmentation by (seed, e, image), dropout by
(seed, e, step, process). So the training state only needs the weights, the optimizer,
scheduler and scaler, the position (epoch, step) and the epoch's running sums; no RNG states.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import signal
import sys
from pathlib import Path

from tqdm import tqdm

from checkpoint import load_training_state, resume_conflicts
from classifier import UserError

# Options that may change when a run is resumed; any other option given on the command line must
# match the interrupted run (options not given are taken from it).
RESUME_FREE = {"device", "num_workers", "precision", "patience", "cache_mb", "compile", "output_dir", "resume", "track", "tracking_uri"}


def options_of(args: argparse.Namespace) -> dict:
    """The run's options as plain data (saved with the training state, compared on resume)."""
    return {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "resume"}


def data_fingerprint(samples: list[tuple[Path, int]], root: Path) -> str:
    """Which files, with which labels, make up the training set (to notice a changed folder on resume)."""
    digest = hashlib.sha1()
    for path, label in samples:
        digest.update(f"{os.path.relpath(path, root)}\t{label}\n".encode())
    return digest.hexdigest()


def prepare_resume(args: argparse.Namespace, given: set[str]) -> dict | None:
    """The saved training state to continue from, or None to start afresh. Fills the options not
    given on this command line from the interrupted run; refuses options that differ."""
    if args.resume is None:
        return None
    if args.resume not in ("", "auto") and "output_dir" not in given:
        args.output_dir = Path(args.resume)
    resume_dir = args.output_dir / "last"
    if args.resume == "auto" and not (resume_dir / "training_state.pt").is_file():
        print(f"No interrupted run in {args.output_dir}; starting afresh")
        return None
    state = load_training_state(resume_dir)
    current = options_of(args)
    conflicts = resume_conflicts(state["options"], current, given, RESUME_FREE)
    if conflicts:
        raise UserError(f"cannot resume {resume_dir} with different options: {'; '.join(conflicts)}. "
                        f"Drop them to continue as before, or train into a new --output-dir")
    for name, value in state["options"].items():
        if name not in given and name != "output_dir":
            setattr(args, name, Path(value) if isinstance(getattr(args, name), Path) else value)
    state["dir"] = resume_dir
    return state


class StopSignal:
    """First Ctrl-C or SIGTERM: ask the loop to stop after the current step and save.
    The handlers are then reset, so a second one stops at once."""

    def __init__(self, announce: bool):
        self.signum, self.announce, self.previous = 0, announce, {}

    def __enter__(self) -> "StopSignal":
        for signum in (signal.SIGINT, signal.SIGTERM):
            self.previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum: int, frame) -> None:
        self.signum = signum
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        if self.announce:
            tqdm.write(f"\n{signal.Signals(signum).name}: stopping after this step and saving "
                       f"(press Ctrl-C again to quit at once)", file=sys.stderr)


def ignore_stop_signals(worker_id: int) -> None:
    """DataLoader workers leave Ctrl-C and SIGTERM to the main process, which stops them itself."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


