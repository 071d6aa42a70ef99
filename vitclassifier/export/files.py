"""The files of an export, listed once: the formats and their suffixes, how a path is known to be an
export, and every file an export writes beside its artefact. export.py checks its outputs with
export_files; predict.py keeps its own outputs off all of them (model_files); the loader and the
web page tell exports from checkpoints with is_export."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

FORMATS = {"onnx": ".onnx", "torchscript": ".torchscript.pt", "int8": ".int8.pt",
           "openvino": ".openvino.xml", "openvino-int8": ".openvino-int8.xml"}
EXPORT_SUFFIXES = (".onnx", ".xml", ".pt")  # files made by export.py; anything else is a checkpoint directory
CPU_ONLY_SUFFIXES = (".xml", ".pt")  # OpenVINO and our TorchScript exports run on the CPU


def sidecar(out: Path) -> Path:
    """ARTEFACT.json: the label map and preprocessing, readable without this code."""
    return out.with_name(out.name + ".json")


def onnx_weights(out: Path) -> Path:
    """The weights a big ONNX model keeps beside it (protobuf holds at most 2 GiB)."""
    return out.with_name(out.name + ".data")


def ir_weights(out: Path) -> Path:
    """An OpenVINO IR's weights, beside its .xml."""
    return out.with_suffix(".bin")


BESIDE: dict[str, list[Callable[[Path], Path]]] = {  # the files a format writes beside the artefact
    "onnx": [onnx_weights], "openvino": [ir_weights], "openvino-int8": [ir_weights]}


def is_export(path: Path) -> bool:
    return Path(path).suffix in EXPORT_SUFFIXES


def export_files(out: Path, fmt: str) -> list[Path]:
    """Every file an export writes: the artefact first, its sidecar JSON, any weights beside it."""
    return [out, sidecar(out), *(beside(out) for beside in BESIDE.get(fmt, []))]


def model_files(model: Path) -> list[Path]:
    """Every file that is part of ``--model``: a checkpoint folder, or a file with whatever any export
    format writes beside it (the format is not known from the name alone)."""
    if model.is_dir():
        return [model]
    beside = dict.fromkeys(name(model) for names in BESIDE.values() for name in names)
    return [model, sidecar(model), *beside]
