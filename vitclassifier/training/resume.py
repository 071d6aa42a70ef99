"""Never lose work: stopping on a signal, and continuing an interrupted run exactly.

A run is a pure function of its options, its data and (seed, epoch, step): the shuffling of
epoch e is seeded by (seed, e), each image's augmentation by (seed, e, image), dropout by
(seed, e, step, process). So the training state only needs the weights, the optimizer,
scheduler and scaler, the position (epoch, step) and the epoch's running sums; no RNG states.
"""
from __future__ import annotations

import hashlib
import os
import signal
import sys
from pathlib import Path

from tqdm import tqdm

from vitclassifier.config import TrainConfig
from vitclassifier.errors import UserError
from vitclassifier.model.checkpoint import load_training_state

# Options that may change when a run is resumed; any other option given on the command line must
# match the interrupted run (options not given are taken from it).
RESUME_FREE = {
    "device",
    "num_workers",
    "precision",
    "patience",
    "cache_mb",
    "compile",
    "output_dir",
    "resume",
    "track",
    "tracking_uri",
}


def saved_options(config: TrainConfig) -> dict:
    """The run's options as plain data, saved with the training state (all but --resume)."""
    return {name: value for name, value in config.as_options().items() if name != "resume"}


def data_fingerprint(samples: list[tuple[Path, int]], root: Path) -> str:
    """Which files, with which labels, make up the training set (to notice a changed folder on resume)."""
    digest = hashlib.sha1()
    for path, label in samples:
        digest.update(f"{os.path.relpath(path, root)}\t{label}\n".encode())
    return digest.hexdigest()


def resume_conflicts(saved: dict, current: dict, given: set[str]) -> list[str]:
    """Options given on this command line that differ from the run being resumed (except those
    in RESUME_FREE, which may change between sessions), as "--name: was X, now Y" lines."""
    return [
        f"--{name.replace('_', '-')}: was {saved[name]!r}, now {current[name]!r}"
        for name in sorted(given)
        if name in saved and name not in RESUME_FREE and saved[name] != current[name]
    ]


def prepare_resume(config: TrainConfig, given: set[str]) -> tuple[TrainConfig, dict | None]:
    """The configuration to run and the saved training state to continue from (None: start afresh).
    Options not given on this command line come from the interrupted run; ones that differ are refused."""
    runtime = config.runtime
    if runtime.resume is None:
        return config, None
    if runtime.resume not in ("", "auto") and "output_dir" not in given:
        config = config.replace(output_dir=Path(runtime.resume))
    output_dir = config.runtime.output_dir
    resume_dir = output_dir / "last"
    if runtime.resume == "auto" and not (resume_dir / "training_state.pt").is_file():
        print(f"No interrupted run in {output_dir}; starting afresh")
        return config, None
    state = load_training_state(resume_dir)
    saved = state.get("options")
    if not isinstance(saved, dict):
        raise UserError(f"cannot resume {resume_dir}: its training state has no options; train afresh")
    current = config.as_options()
    conflicts = resume_conflicts(saved, current, given)
    if conflicts:
        raise UserError(
            f"cannot resume {resume_dir} with different options: {'; '.join(conflicts)}. "
            f"Drop them to continue as before, or train into a new --output-dir"
        )
    kept = {
        name: value
        for name, value in saved.items()
        if name in current and name not in given and name != "output_dir"
    }
    state["dir"] = resume_dir
    return config.replace(**kept), state


class StopSignal:
    """First Ctrl-C or SIGTERM: ask the loop to stop after the current step and save.
    The handlers are then reset, so a second one stops at once."""

    def __init__(self, announce: bool):
        self.signum, self.announce, self.previous = 0, announce, {}

    def __enter__(self) -> StopSignal:
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
            tqdm.write(
                f"\n{signal.Signals(signum).name}: stopping after this step and saving "
                f"(press Ctrl-C again to quit at once)",
                file=sys.stderr,
            )


def ignore_stop_signals(worker_id: int) -> None:
    """DataLoader workers leave Ctrl-C and SIGTERM to the main process, which stops them itself."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
