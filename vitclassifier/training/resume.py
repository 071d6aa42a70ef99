"""Never lose work: stopping on a signal, and continuing an interrupted run exactly.

A run is a pure function of its options, its data and (seed, epoch, step): the shuffling of
epoch e is seeded by (seed, e), each image's augmentation by (seed, e, image), dropout by
(seed, e, step, process). So the training state only needs the weights, the optimizer,
scheduler and scaler, the position (epoch, step) and the epoch's running sums; no RNG states.
"""
from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from tqdm import tqdm

from vitclassifier.config import TrainConfig
from vitclassifier.errors import UserError
from vitclassifier.model.checkpoint import load_training_state
from vitclassifier.model.trust import refusal
from vitclassifier.options import dest, options_of
from vitclassifier.text import printable
from vitclassifier.training.state import RunState
from vitclassifier.urls import redact

# Options that may change when a run is resumed (their field says resume="free" or "session"); any
# other option given on the command line must match the interrupted run (options not given are taken
# from it).
RESUME_FREE = {dest(f) for f, _ in options_of(TrainConfig) if f.metadata.get("resume")}

# Options of one session, not of the run (resume="session"): a resumed run takes them from its own
# command line only, never from the save, so a run folder from elsewhere can't choose the tracking
# server our metrics, pictures and model go to, nor the device, workers, memory or compiler we use.
# (--patience and --precision may change too, but they shape the run's numbers: when not typed, the
# saved value holds, so that a resumed run repeats the uninterrupted one.)
SESSION_OPTIONS = {dest(f) for f, _ in options_of(TrainConfig) if f.metadata.get("resume") == "session"}


def saved_options(config: TrainConfig) -> dict:
    """The run's options as plain data, saved with the training state (all but --resume), their text
    redacted (urls.redact): a URL's password or token and the environment's credentials are never
    saved, logged or written into training_info.json (a resume from a URL that held one needs --data
    again)."""
    return {name: redact(value) if isinstance(value, str) else value
            for name, value in config.as_options().items() if name != "resume"}


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
    Options not given on this command line come from the interrupted run (except SESSION_OPTIONS,
    which come from this command line only); ones that differ are refused. The saved state is input:
    it is checked like a command line (RunState.check, then TrainConfig.from_options's checks)."""
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
    where = f"training state {resume_dir / 'training_state.pt'}"
    state = load_training_state(resume_dir)
    RunState.check(state, where)
    saved, current = state["options"], config.as_options()
    conflicts = resume_conflicts(saved, saved_options(config), given)  # as saved: redacted
    if conflicts:
        raise UserError(
            f"cannot resume {resume_dir} with different options: {printable('; '.join(conflicts))}. "
            f"Drop them to continue as before, or train into a new --output-dir"
        )
    kept = {name: value for name, value in saved.items()
            if name in current and name not in given and name not in SESSION_OPTIONS}
    try:
        resumed = TrainConfig.from_options({**current, **kept})
    except (UserError, TypeError, ValueError) as error:  # the checks of a command line, on the saved options
        raise refusal(where, f"its options are invalid: {error}") from None
    restored = {name: value for name, value in kept.items() if value != current[name]}
    if restored and os.environ.get("RANK", "0") == "0":
        shown = ", ".join(f"--{name.replace('_', '-')} {value}" for name, value in sorted(restored.items()))
        print(f"Options restored from the interrupted run: {printable(shown)}")
    state["dir"] = resume_dir
    return resumed, state


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
