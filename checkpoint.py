"""Checkpoints: atomic saving of Hugging Face model directories and loading them back.

A checkpoint is a plain ``save_pretrained`` directory (config.json with id2label/label2id,
model.safetensors, preprocessor_config.json), so transformers.pipeline can load it as is.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from torch import nn
from transformers.utils import logging as hf_logging

from classifier import Preprocessing, UserError


def load_checkpoint(directory: str | Path) -> tuple[nn.Module, Preprocessing, list[str]]:
    """Load a saved classifier for inference: model in eval mode, its preprocessing and labels.

    Weights are read from safetensors only (no pickle). A directory that isn't a checkpoint, has
    no label map, or whose label map doesn't fit its classification head is refused."""
    from transformers import AutoImageProcessor, AutoModelForImageClassification
    directory = Path(directory)
    recover_interrupted_save(directory)
    config_path = directory / "config.json"
    if not config_path.is_file() or not (directory / "preprocessor_config.json").is_file():
        raise UserError(f"{directory} is not a trained checkpoint (config.json and preprocessor_config.json "
                        f"expected). Train one with `python train.py`, or pass --model DIR")
    if not (directory / "model.safetensors").is_file():
        raise UserError(f"{directory} has no model.safetensors; only safetensors weights are loaded "
                        f"(pickled .bin files can run code)")
    try:
        if "id2label" not in json.loads(config_path.read_text()):
            raise UserError(f"{config_path} has no label map (id2label); cannot name the predictions")
        hf_logging.disable_progress_bar()
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # the mismatch report below replaces transformers' own
        try:
            model = AutoModelForImageClassification.from_pretrained(directory, dtype=torch.float32,
                                                                    use_safetensors=True).eval()
        finally:
            hf_logging.set_verbosity(verbosity)
        prep = Preprocessing.from_image_processor(AutoImageProcessor.from_pretrained(directory))
    except (OSError, ValueError, RuntimeError) as error:  # RuntimeError: head size != label map size
        raise UserError(f"cannot load checkpoint {directory}: {str(error).splitlines()[0]}. Does its "
                        f"label map (config.json id2label) match its classification head?") from None
    labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    return model, prep, labels


def read_info(directory: Path) -> dict:
    """A checkpoint's training_info.json (score, labels, calibration temperature), or {}."""
    path = Path(directory) / "training_info.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def update_info(directory: Path, **fields) -> None:
    """Add ``fields`` to training_info.json, atomically (written beside it, then renamed over it)."""
    path = Path(directory) / "training_info.json"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({**read_info(directory), **fields}, indent=2))
    os.replace(tmp, path)


def recover_interrupted_save(directory: Path) -> None:
    """A crash between atomic_write_dir's two renames leaves the previous checkpoint complete in
    NAME.old and nothing at NAME: put it back."""
    directory = Path(directory)
    old = directory.with_name(directory.name + ".old")
    if not directory.exists() and old.is_dir():
        old.rename(directory)


def _fsync_dir(directory: Path) -> None:
    """Make a rename inside ``directory`` durable (on POSIX; Windows has no directory fsync)."""
    if os.name == "posix":
        handle = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(handle)
        finally:
            os.close(handle)


def atomic_write_dir(directory: Path, write) -> None:
    """Call ``write(tmp_dir)``, then swap tmp_dir into ``directory`` with renames. A crash never
    leaves a half-written checkpoint under ``directory``: during the two renames the complete old
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
    _fsync_dir(directory.parent)
    shutil.rmtree(old, ignore_errors=True)


def save_model(model: nn.Module, prep: Preprocessing, directory: Path, info: dict | None = None,
               training_state: dict | None = None) -> None:
    """Save a ``save_pretrained`` directory (config with labels, safetensors, preprocessing)
    atomically, with an optional training_info.json and training_state.pt (for --resume)."""
    def write(tmp: Path) -> None:
        model.save_pretrained(tmp, safe_serialization=True)
        prep.to_image_processor().save_pretrained(tmp)
        if info is not None:
            (tmp / "training_info.json").write_text(json.dumps(info, indent=2))
        if training_state is not None:
            torch.save(training_state, tmp / "training_state.pt")
    try:
        atomic_write_dir(directory, write)
    except OSError as error:
        raise UserError(f"could not write checkpoint {directory}: {error.strerror or error}. The previous "
                        f"checkpoint there is intact; free some space or pick another --output-dir") from None


def check_output_dir(output_dir: Path, needed_bytes: int) -> None:
    """Fail before training, not after an hour, when checkpoints could not be written."""
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        probe = output_dir / ".write-test"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as error:
        raise UserError(f"cannot write to --output-dir {output_dir}: {error.strerror or error}") from None
    free = shutil.disk_usage(output_dir).free
    if free < needed_bytes:
        raise UserError(f"--output-dir {output_dir} has {free / 2**20:.0f} MiB free, but the checkpoints need "
                        f"about {needed_bytes / 2**20:.0f} MiB; free some space or pick another --output-dir")


def resume_conflicts(saved: dict, current: dict, given: set[str], free: set[str]) -> list[str]:
    """Options given on this command line that differ from the run being resumed (except those
    in ``free``, which may change between sessions), as "--name: was X, now Y" lines."""
    return [f"--{name.replace('_', '-')}: was {saved[name]!r}, now {current[name]!r}"
            for name in sorted(given) if name in saved and name not in free and saved[name] != current[name]]


def load_training_state(directory: Path) -> dict:
    """Read training_state.pt with ``weights_only=True``: tensors and plain data, never code."""
    recover_interrupted_save(directory)
    path = Path(directory) / "training_state.pt"
    if not path.is_file():
        raise UserError(f"cannot resume: {path} is missing (train without --resume to start afresh)")
    return torch.load(path, map_location="cpu", weights_only=True)
