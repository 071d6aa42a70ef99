"""Writing a classifier in the export formats: ONNX, TorchScript (fp32 or dynamic int8), each
carrying its label map and preprocessing (``describe``) so it can be used without this code.
OpenVINO's writer is in openvino.py; inference/runtimes.py reads every format back."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from torch import nn

from vitclassifier.data.transforms import Preprocessing
from vitclassifier.errors import UserError
from vitclassifier.model.vit import quiet_transformers

EXTRAS = "pip install -r requirements-extras.txt"
# protobuf cannot hold more than 2 GiB in one file; bigger ONNX models keep their weights beside it
ONNX_SINGLE_FILE_BYTES = 1800 * 2**20
TORCHSCRIPT_META = "classifier.json"  # the extra file of a TorchScript archive holding its metadata
META_KEYS = ("labels", "image_size", "crop_pct", "mean", "std")  # what every export must carry


def describe(prep: Preprocessing, labels: list[str], source: Path, fmt: str, temperature: float) -> dict:
    """What the sidecar JSON and the embedded metadata say: enough to preprocess and read the output."""
    return {
        "format": fmt,
        "source": str(source),
        "labels": labels,
        "image_size": prep.image_size,
        "crop_pct": prep.crop_pct,
        "resize_size": prep.resize_size,
        "interpolation": "bicubic",
        "mean": list(prep.mean),
        "std": list(prep.std),
        "temperature": temperature,
        "preprocessing": "RGB; resize the shorter side to resize_size (bicubic, antialiased); centre-crop "
        "image_size; scale to 0..1; subtract mean and divide by std per channel; NCHW float32",
        "input": "pixel_values",
        "output": "logits (softmax(logits / temperature) gives the confidences)",
        "exported_with": f"torch {torch.__version__}",
    }


def read_meta(meta: dict, path: Path) -> tuple[Preprocessing, list[str]]:
    """The preprocessing and labels an export carries in its metadata (see describe)."""
    missing = [key for key in META_KEYS if key not in meta]
    if missing:
        raise UserError(f"{path} has no {', '.join(missing)} in its metadata; export it with export.py")
    prep = Preprocessing(
        int(meta["image_size"]), float(meta["crop_pct"]), tuple(meta["mean"]), tuple(meta["std"])
    )
    return prep, list(meta["labels"])


def export_onnx(net: nn.Module, example: torch.Tensor, out: Path, meta: dict, opset: int | None) -> int:
    """ONNX with a dynamic batch axis and ``meta`` in metadata_props; returns the opset written."""
    try:
        import onnx  # noqa: F401  (the exporter needs onnx and onnxscript; say so before it fails deep inside)
        import onnxscript  # noqa: F401
    except ImportError as error:
        raise UserError(f"--format onnx needs the {error.name} package: {EXTRAS}") from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's notes on transformers internals help no user
        program = torch.onnx.export(
            net,
            (example,),
            input_names=["pixel_values"],
            output_names=["logits"],
            dynamic_shapes={"pixel_values": {0: torch.export.Dim("batch")}},
            opset_version=opset,
            dynamo=True,
            verbose=False,
        )
    opset = program.model.opset_imports[""]
    for key, value in {**meta, "opset": opset}.items():
        program.model.metadata_props[key] = json.dumps(value)
    weights = sum(p.numel() * p.element_size() for p in net.parameters())
    program.save(str(out), external_data=weights > ONNX_SINGLE_FILE_BYTES)
    return opset


def trace(net: nn.Module, example: torch.Tensor, out: Path, meta: dict) -> None:
    """TorchScript by tracing, with ``meta`` as the archive's extra file classifier.json."""
    with warnings.catch_warnings(), torch.inference_mode(), quiet_transformers():
        # The tracer warns about ViT's checks of channels and image size, which the preprocessing
        # fixes, and of causal attention, which ViT never uses. TorchScript and torch.ao
        # quantization are deprecated since PyTorch 2.10 but still work.
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(net, example)
        torch.jit.save(traced, str(out), _extra_files={TORCHSCRIPT_META: json.dumps(meta)})


def quantize_int8(net: nn.Module) -> nn.Module:
    """Dynamic int8 quantization of every nn.Linear (weights int8, activations quantized on the fly)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation notice of torch.ao.quantization, see trace()
        return torch.ao.quantization.quantize_dynamic(net, {nn.Linear}, dtype=torch.qint8)
