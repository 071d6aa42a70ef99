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
    """Load a saved classifier for inference: model in eval mode, its preprocessing and labels."""
    from transformers import AutoImageProcessor, AutoModelForImageClassification
    directory = Path(directory)
    if not (directory / "config.json").is_file() or not (directory / "preprocessor_config.json").is_file():
        raise UserError(f"{directory} is not a trained checkpoint (config.json and preprocessor_config.json "
                        f"expected). Train one with `python train.py`, or pass --model DIR")
    hf_logging.disable_progress_bar()
    model = AutoModelForImageClassification.from_pretrained(directory, dtype=torch.float32).eval()
    prep = Preprocessing.from_image_processor(AutoImageProcessor.from_pretrained(directory))
    labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    return model, prep, labels


def atomic_write_dir(directory: Path, write) -> None:
    """Call ``write(tmp_dir)``, then swap tmp_dir into ``directory`` with renames. A crash never
    leaves a half-written checkpoint under ``directory``: during the two renames the complete old
    one sits in ``NAME.old`` and the complete new one in ``NAME.tmp``."""
    directory = Path(directory)
    tmp, old = directory.with_name(directory.name + ".tmp"), directory.with_name(directory.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write(tmp)
    for file in tmp.iterdir():
        with open(file, "rb") as handle:
            os.fsync(handle.fileno())
    if directory.exists():
        shutil.rmtree(old, ignore_errors=True)
        directory.rename(old)
    tmp.rename(directory)
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
    atomic_write_dir(directory, write)


def load_training_state(directory: Path) -> dict:
    """Read training_state.pt with ``weights_only=True``: tensors and plain data, never code."""
    path = Path(directory) / "training_state.pt"
    if not path.is_file():
        raise UserError(f"cannot resume: {path} is missing (train without --resume to start afresh)")
    return torch.load(path, map_location="cpu", weights_only=True)
