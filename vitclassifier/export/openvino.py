"""Converting a classifier to OpenVINO, the fastest way we have found to predict on CPUs, and
writing it as an IR (runtimes.py runs both).

Two ways in:
  * predict.py --runtime openvino converts a checkpoint in memory (a few seconds) and runs it in
    bf16 where the CPU has bf16 instructions, fp32 elsewhere;
  * export.py --format openvino | openvino-int8 writes an OpenVINO IR (model.xml + model.bin, the
    label map and preprocessing inside it), which predict.py --model FILE.xml runs. The int8 one is
    calibrated on your images with NNCF: every activation gets a fixed int8 range, measured once, so
    the CPU's int8 dot-product instructions do the matmuls, with no range-finding at run time as in
    PyTorch's dynamic int8, which it beats (docs/performance.md has the figures).
"""
from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import torch
from torch import nn

from vitclassifier.errors import UserError
from vitclassifier.files import write_files_via_temp
from vitclassifier.model.vit import quiet_transformers

INSTALL = "pip install openvino nncf, or pip install -r requirements-extras.txt"
# Left in bf16 by the int8 calibration: quantizing the classifier's input and the patch embedding cost
# the most agreement with fp32, and keeping them costs little speed (measured: docs/performance.md).
KEEP_IN_BF16 = [".*classifier.*", ".*patch_embeddings.*"]


def import_openvino(purpose: str):
    try:
        import openvino
    except ImportError:
        raise UserError(f"{purpose} needs the openvino package: {INSTALL}") from None
    return openvino


def convert(model: nn.Module, image_size: int):
    """The PyTorch classifier as an OpenVINO model (in memory); the batch axis stays dynamic."""
    openvino = import_openvino("OpenVINO")
    try:
        with warnings.catch_warnings(), quiet_transformers():  # the tracer's warnings, transformers' notes
            warnings.simplefilter("ignore")
            return openvino.convert_model(
                model.cpu().eval(), example_input={"pixel_values": torch.zeros(2, 3, image_size, image_size)}
            )
    except Exception as error:  # OpenVINO raises its own types for graphs it cannot take
        raise UserError(
            f"OpenVINO could not convert this model ({str(error).splitlines()[0]}); "
            f"use the PyTorch runtime instead"
        ) from None


def quantize_static(converted, calibration: torch.Tensor):
    """Static int8 (NNCF post-training quantization, transformer preset) calibrated on
    ``calibration``, a batch of preprocessed images like those to be predicted."""
    logging.getLogger("torch.utils.cpp_extension").setLevel(
        logging.ERROR
    )  # no "no CUDA runtime" note on import
    try:
        import nncf
    except ImportError:
        raise UserError(f"int8 calibration needs the nncf package: {INSTALL}") from None
    nncf.set_log_level(logging.WARNING)  # not its notes on every layer it leaves alone
    samples = nncf.Dataset([image[None].numpy() for image in calibration])
    return nncf.quantize(
        converted,
        samples,
        model_type=nncf.ModelType.TRANSFORMER,
        subset_size=len(calibration),
        ignored_scope=nncf.IgnoredScope(patterns=KEEP_IN_BF16, validate=False),
    )


def save_ir(converted, out: Path, meta: dict) -> None:
    """Write ``out`` (.xml) and its weights (.bin) with ``meta`` in the IR's rt_info, both in a
    temporary folder first, then moved into place (the .xml last): an interrupted or failed export
    (disk full: a UserError) never leaves a half-written model, and the previous one stays."""
    openvino = import_openvino("--format openvino")
    for key, value in meta.items():
        converted.set_rt_info(json.dumps(value), ["classifier", key])
    # weights as they are (no fp16 compression): int8 stays int8
    write_files_via_temp(out, lambda tmp: openvino.save_model(converted, str(tmp), compress_to_fp16=False))
