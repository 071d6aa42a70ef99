"""Checkpoints: atomic saving of Hugging Face model directories and loading them back.

A checkpoint is a plain ``save_pretrained`` directory (config.json with id2label/label2id,
model.safetensors, preprocessor_config.json), so transformers.pipeline can load it as is.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from torch import nn

from vitclassifier.data.transforms import Preprocessing
from vitclassifier.errors import UserError
from vitclassifier.files import (
    atomic_write_dir,
    atomic_write_text,
    recover_interrupted_save,
)
from vitclassifier.model.vit import quiet_transformers


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
        with quiet_transformers():  # the mismatch report below replaces transformers' own
            model = AutoModelForImageClassification.from_pretrained(directory, dtype=torch.float32,
                                                                    use_safetensors=True).eval()
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
    atomic_write_text(
        Path(directory) / "training_info.json", json.dumps({**read_info(directory), **fields}, indent=2)
    )


def save_model(
    model: nn.Module,
    prep: Preprocessing,
    directory: Path,
    info: dict | None = None,
    training_state: dict | None = None,
) -> None:
    """Save a ``save_pretrained`` directory (config with labels, safetensors, preprocessing)
    atomically, with an optional training_info.json and training_state.pt (for --resume)."""

    def write(tmp: Path) -> None:
        with quiet_transformers():  # no progress bar for one file
            model.save_pretrained(tmp, safe_serialization=True)
        prep.to_image_processor().save_pretrained(tmp)
        if info is not None:
            (tmp / "training_info.json").write_text(json.dumps(info, indent=2))
        if training_state is not None:
            torch.save(training_state, tmp / "training_state.pt")

    try:
        atomic_write_dir(directory, write)
    except OSError as error:
        raise UserError(
            f"could not write checkpoint {directory}: {error.strerror or error}. The previous "
            f"checkpoint there is intact; free some space or pick another --output-dir"
        ) from None


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
        raise UserError(
            f"--output-dir {output_dir} has {free / 2**20:.0f} MiB free, but the checkpoints need "
            f"about {needed_bytes / 2**20:.0f} MiB; free some space or pick another --output-dir"
        )


def load_training_state(directory: Path) -> dict:
    """Read training_state.pt with ``weights_only=True``: tensors and plain data, never code."""
    recover_interrupted_save(directory)
    path = Path(directory) / "training_state.pt"
    if not path.is_file():
        raise UserError(f"cannot resume: {path} is missing (train without --resume to start afresh)")
    return torch.load(path, map_location="cpu", weights_only=True)
