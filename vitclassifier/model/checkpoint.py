"""Checkpoints: atomic saving of Hugging Face model directories and loading them back.

A checkpoint is a plain ``save_pretrained`` directory (config.json with id2label/label2id,
model.safetensors, preprocessor_config.json), so transformers.pipeline can load it as is.
"""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import torch
from torch import nn

from vitclassifier.data.transforms import Preprocessing
from vitclassifier.errors import UserError
from vitclassifier.files import atomic_write_dir, atomic_write_text, recover_interrupted_write
from vitclassifier.model.trust import (
    check_preprocessing,
    check_processor_sizes,
    check_temperature,
    check_weights_fit,
    first_line,
    label_names,
    load_verified,
    read_info_text,
    read_json_object,
    read_weights_header,
    refusal,
)
from vitclassifier.model.vit import classifier_head, quiet_transformers
from vitclassifier.text import printable, shell_word

HEAD_WEIGHT = "classifier.weight"  # our head's weight: (number of labels, features)


def is_complete_checkpoint(directory: Path) -> bool:
    """Whether ``directory`` holds a whole saved checkpoint: its config, weights and preprocessing."""
    weights = Path(directory) / "model.safetensors"
    return (all((Path(directory) / name).is_file() for name in ("config.json", "preprocessor_config.json"))
            and weights.is_file() and weights.stat().st_size > 0)


def recover_interrupted_save(directory: Path) -> None:
    """Before any load: a crash between the two renames of a save (where directories cannot be swapped
    atomically) left the previous checkpoint in NAME.old; put it back if it is complete."""
    recover_interrupted_write(directory, is_complete_checkpoint)


def load_checkpoint(directory: str | Path) -> tuple[nn.Module, Preprocessing, list[str]]:
    """Load a saved classifier for inference: model in eval mode, its preprocessing and labels.

    A checkpoint is input (model/trust.py): weights are read from safetensors only (no pickle),
    the label map, preprocessing and the weights header are checked against the config before the
    network is built, and weights missing or left over are refused, never filled in at random."""
    from transformers import AutoConfig
    directory = Path(directory)
    recover_interrupted_save(directory)
    config_path = directory / "config.json"
    if not config_path.is_file() or not (directory / "preprocessor_config.json").is_file():
        if (directory / "best" / "config.json").is_file():  # a run's output folder: its model is in best/
            best = directory / "best"
            raise UserError(f"{printable(directory)} is a training run's folder, not a checkpoint; its best "
                            f"model is {printable(best)}: --model {shell_word(best)}")
        raise UserError(f"{printable(directory)} is not a trained checkpoint (config.json and "
                        f"preprocessor_config.json expected). Train one with `python train.py`, or pass "
                        f"--model DIR")
    if not (directory / "model.safetensors").is_file():
        raise UserError(f"{directory} has no model.safetensors; only safetensors weights are loaded "
                        f"(pickled .bin files can run code)")
    where = f"checkpoint {directory}"
    raw = read_json_object(config_path, where)
    if "id2label" not in raw:
        raise UserError(f"{config_path} has no label map (id2label); cannot name the predictions")
    labels = label_names(raw["id2label"], where)
    header = read_weights_header([directory / "model.safetensors"], where)
    if HEAD_WEIGHT in header and header[HEAD_WEIGHT][0] != len(labels):
        raise refusal(where, f"its label map (config.json id2label) names {len(labels)} classes but its "
                             f"classification head has {header[HEAD_WEIGHT][0]} outputs")
    try:
        with quiet_transformers():
            config = AutoConfig.from_pretrained(directory, trust_remote_code=False)  # no auto_map code
    except (OSError, ValueError, TypeError, KeyError) as error:
        raise refusal(where, f"config.json: {first_line(error)}") from None
    prep = checkpoint_preprocessing(directory, where, getattr(config, "image_size", None))
    check_weights_fit(config, header, where, head_may_differ=False)
    with quiet_transformers():  # check_loading_info reports what transformers would only log
        model = load_verified(directory, where, head_may_differ=False, config=config, dtype=torch.float32)
    return model.eval(), prep, labels


def checkpoint_preprocessing(directory: Path, where: str, model_size: object = None) -> Preprocessing:
    """preprocessor_config.json as a checked Preprocessing (sizes, crop, mean and std)."""
    from transformers import AutoImageProcessor
    check_processor_sizes(read_json_object(directory / "preprocessor_config.json", where), where)
    try:
        with quiet_transformers():
            processor = AutoImageProcessor.from_pretrained(directory, trust_remote_code=False)
            prep = Preprocessing.from_image_processor(processor)
    except (OSError, ValueError, TypeError, KeyError, AttributeError, ZeroDivisionError) as error:
        raise refusal(where, f"preprocessor_config.json: {first_line(error)}") from None
    return check_preprocessing(prep, where, model_size)


def read_info(directory: Path) -> dict:
    """A checkpoint's training_info.json (score, labels, calibration), or {}. ``temperature`` is what the
    logits are still to be divided by (1 once calibration is folded into the head, see
    fold_temperature; an older checkpoint's unfolded T), ``temperature_folded`` a record of what the
    head already divides by. Checked: a JSON object whose temperatures, if any, are finite and > 0."""
    path = Path(directory) / "training_info.json"
    if not path.is_file():
        return {}
    where = f"checkpoint {directory}"
    info = read_info_text(path, where)
    if "temperature_folded" in info:
        info["temperature_folded"] = check_temperature(info["temperature_folded"], where)
    return info


def fold_temperature(directory: Path, calibration: dict) -> None:
    """Divide the classification head's weight and bias by the calibrated temperature and save
    ``directory`` again, training_info.json with it, in one atomic swap. Its logits are then the
    calibrated ones, so whatever reads the checkpoint (transformers.pipeline, exports, the web page,
    predict.py) gives the same confidences; training_info.json records ``temperature_folded`` and a
    ``temperature`` (what is still to divide by) of 1, which older versions read the same way."""
    temperature, info = calibration["temperature"], read_info(directory)
    folded = info.get("temperature_folded", 1.0) * temperature  # calibrated again: the two compose
    info = {**info, **calibration, "temperature": 1.0, "temperature_folded": folded}
    if temperature == 1.0:
        update_info(directory, **info)  # nothing to fold
        return
    model, prep, _ = load_checkpoint(directory)
    _, _, head = classifier_head(model)
    with torch.no_grad():
        head.weight.div_(temperature)
        if head.bias is not None:
            head.bias.div_(temperature)
    save_model(model, prep, directory, info=info)


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
        atomic_write_dir(directory, write, is_complete_checkpoint)
    except (OSError, RuntimeError) as error:  # torch.save reports a full disk as a RuntimeError
        reason = getattr(error, "strerror", None) or str(error).splitlines()[0]
        raise UserError(f"could not write checkpoint {directory}: {reason}. The previous checkpoint there is "
                        f"intact; free some space or pick another --output-dir") from None


def load_training_state(directory: Path) -> dict:
    """Read training_state.pt with ``weights_only=True``: tensors and plain data, never code. A file
    that doesn't load (truncated, empty, not ours, or holding other Python objects) is one line."""
    recover_interrupted_save(directory)
    path = Path(directory) / "training_state.pt"
    if not path.is_file():
        raise UserError(f"cannot resume: {path} is missing (train without --resume to start afresh)")
    where = f"training state {path}"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # what weights_only says of anything but tensors and plain data
        raise refusal(where, "it holds Python objects other than tensors and plain data, which could "
                             "run code; refused (train without --resume to start afresh)") from None
    except Exception as error:  # truncated, empty, not a torch file: whatever fails, the file is at fault
        raise refusal(where, f"it is damaged ({first_line(error)}); train without --resume "
                             f"to start afresh") from None
    if not isinstance(state, dict):
        raise refusal(where, f"it holds a {type(state).__name__}, not a training state")
    return state
