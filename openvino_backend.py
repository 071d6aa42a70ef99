"""Running a classifier with OpenVINO on the CPU, the fastest way we have found to predict there.

Two ways in:
  * predict.py --runtime openvino converts a checkpoint in memory (a few seconds) and runs it in
    bf16 where the CPU has bf16 instructions, fp32 elsewhere;
  * export.py --format openvino | openvino-int8 writes an OpenVINO IR (model.xml + model.bin, the
    label map and preprocessing inside it), which predict.py --model FILE.xml runs. The int8 one is
    calibrated on your images with NNCF: every activation gets a fixed int8 range, measured once, so
    the CPU's int8 dot-product instructions do the matmuls (about 1.5x PyTorch's dynamic int8 here).
"""
from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn

from classifier import UserError

INSTALL = "pip install openvino nncf, or pip install -r requirements-extras.txt"
# Left in bf16 by the int8 calibration: quantizing the classifier's input and the patch embedding cost
# the most agreement with fp32 (98.8% -> 100% of 240 images on a barely-trained model, for 3% speed).
KEEP_IN_BF16 = [".*classifier.*", ".*patch_embeddings.*"]


def import_openvino(purpose: str):
    try:
        import openvino
    except ImportError:
        raise UserError(f"{purpose} needs the openvino package: {INSTALL}") from None
    return openvino


def convert(model: nn.Module, image_size: int):
    """The PyTorch classifier as an OpenVINO model (in memory); the batch axis stays dynamic."""
    from export import quiet_transformers
    openvino = import_openvino("OpenVINO")
    try:
        with warnings.catch_warnings(), quiet_transformers():  # the tracer's warnings, transformers' notes
            warnings.simplefilter("ignore")
            return openvino.convert_model(model.cpu().eval(),
                                          example_input={"pixel_values": torch.zeros(2, 3, image_size, image_size)})
    except Exception as error:  # OpenVINO raises its own types for graphs it cannot take
        raise UserError(f"OpenVINO could not convert this model ({str(error).splitlines()[0]}); "
                        f"use the PyTorch runtime instead") from None


def quantize_static(converted, calibration: torch.Tensor):
    """Static int8 (NNCF post-training quantization, transformer preset) calibrated on
    ``calibration``, a batch of preprocessed images like those to be predicted."""
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)  # no "no CUDA runtime" note on import
    try:
        import nncf
    except ImportError:
        raise UserError(f"int8 calibration needs the nncf package: {INSTALL}") from None
    nncf.set_log_level(logging.WARNING)  # not its notes on every layer it leaves alone
    samples = nncf.Dataset([image[None].numpy() for image in calibration])
    return nncf.quantize(converted, samples, model_type=nncf.ModelType.TRANSFORMER, subset_size=len(calibration),
                         ignored_scope=nncf.IgnoredScope(patterns=KEEP_IN_BF16, validate=False))


class OpenVinoModel:
    """An OpenVINO model compiled for the CPU, called like a Hugging Face classifier:
    ``model(pixel_values=x).logits``. ``meta``: what an exported IR carries (labels, preprocessing)."""

    def __init__(self, converted, bf16: bool, meta: dict | None = None):
        openvino = import_openvino("OpenVINO")
        compiled = openvino.Core().compile_model(converted, "CPU", {
            "PERFORMANCE_HINT": "LATENCY",  # one request at a time, on every core
            "INFERENCE_PRECISION_HINT": "bf16" if bf16 else "f32"})
        self.request = compiled.create_infer_request()
        self.meta = meta or {}

    @classmethod
    def from_torch(cls, model: nn.Module, bf16: bool) -> "OpenVinoModel":
        """predict.py --runtime openvino: the checkpoint's model converted in memory and compiled."""
        import_openvino("--runtime openvino")
        return cls(convert(model, getattr(model.config, "image_size", 224)), bf16)

    def __call__(self, pixel_values: torch.Tensor) -> SimpleNamespace:
        logits = self.request.infer([pixel_values.detach().cpu().numpy()])[0]
        return SimpleNamespace(logits=torch.tensor(logits))  # a copy: the next call reuses OpenVINO's buffer

    def eval(self) -> "OpenVinoModel":
        return self  # always in inference mode; here so that validation code can call it like on a module

    def to(self, device: torch.device) -> "OpenVinoModel":
        return self  # the CPU, always


def save_ir(converted, out: Path, meta: dict) -> None:
    """Write ``out`` (.xml) and its weights (.bin) with ``meta`` in the IR's rt_info, each under a
    temporary name first, so an interrupted export never leaves a half-written model."""
    openvino = import_openvino("--format openvino")
    for key, value in meta.items():
        converted.set_rt_info(json.dumps(value), ["classifier", key])
    tmp = out.with_name(out.stem + ".tmp.xml")
    openvino.save_model(converted, str(tmp), compress_to_fp16=False)  # weights as they are; int8 stays int8
    os.replace(tmp.with_suffix(".bin"), out.with_suffix(".bin"))
    os.replace(tmp, out)


def load_ir(path: Path, bf16: bool) -> OpenVinoModel:
    """An IR written by export.py, compiled for the CPU, with its rt_info metadata as ``.meta``."""
    openvino = import_openvino(f"{path} is an OpenVINO model; running it")
    if not path.is_file() or not path.with_suffix(".bin").is_file():
        raise UserError(f"OpenVINO model {path} (and its .bin beside it) not found. "
                        f"Export one with `python export.py --format openvino-int8`")
    converted = openvino.Core().read_model(str(path))
    if not converted.has_rt_info(["classifier", "labels"]):
        raise UserError(f"{path} has no label map in its metadata; export it with export.py")
    info = converted.get_rt_info()["classifier"]
    meta = {key: json.loads(info[key].astype(str)) for key in info.keys()}
    return OpenVinoModel(converted, bf16, meta)
