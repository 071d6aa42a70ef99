"""Writing a classifier in the export formats: ONNX, TorchScript (fp32 or dynamic int8), each
carrying its label map and preprocessing (``describe``) so it can be used without this code.
OpenVINO's writer is in openvino.py; runtimes.py reads every format back."""
from __future__ import annotations

import contextlib
import io
import json
import logging
import warnings
from pathlib import Path

import torch
from torch import nn

from vitclassifier.data.transforms import Preprocessing
from vitclassifier.errors import UserError
from vitclassifier.files import atomic_write_bytes, write_files_via_temp
from vitclassifier.model.vit import quiet_transformers

EXTRAS = "pip install -r requirements-extras.txt"
# protobuf cannot hold more than 2 GiB in one file; bigger ONNX models keep their weights beside it
ONNX_SINGLE_FILE_BYTES = 1800 * 2**20
TORCHSCRIPT_META = "classifier.json"  # the extra file of a TorchScript archive holding its metadata
META_KEYS = ("labels", "image_size", "crop_pct", "mean", "std")  # what every export must carry
# The lowest opset a ViT exports to: LayerNormalization exists from opset 17 (measured: the exporter
# writes 18 and converts down; to 16 or lower the conversion fails and it would keep 18).
ONNX_MIN_OPSET = 17


def describe(prep: Preprocessing, labels: list[str], source: Path, fmt: str, temperature: float,
             thresholds: dict[str, float] | None = None) -> dict:
    """What the sidecar JSON and the embedded metadata say: enough to preprocess and read the output.
    ``thresholds``: a model of several labels per image, with its threshold per label."""
    several = {"problem_type": "multi_label_classification", "thresholds": thresholds,
               "output": "logits (sigmoid(logits) gives each label's probability; a label is predicted at or "
                         "above its threshold)"} if thresholds is not None else {}
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
        **several,
    }


def read_meta(meta: dict, path: Path) -> tuple[Preprocessing, list[str]]:
    """The preprocessing and labels an export carries in its metadata (see describe), checked: labels
    a list of distinct strings, image size a whole number within bounds, crop in (0, 1], three finite
    means, three stds above 0. The graph's own sizes are compared by runtimes.py."""
    from vitclassifier.model.trust import check_labels, preprocessing_from_meta
    where = f"export {path}"
    missing = [key for key in META_KEYS if key not in meta]
    if missing:
        raise UserError(f"cannot load {where}: it has no {', '.join(missing)} in its metadata; "
                        f"export it with export.py")
    return preprocessing_from_meta(meta, where), check_labels(meta["labels"], where)


@contextlib.contextmanager
def quiet_onnx_exporter():
    """The exporter logs a version conversion it cannot do as a warning with a traceback, then
    carries on in its own opset; export_onnx reports that as one line instead."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def export_onnx(net: nn.Module, example: torch.Tensor, out: Path, meta: dict, opset: int | None) -> int:
    """ONNX with a dynamic batch axis and ``meta`` in metadata_props; returns the opset written.
    Written under a temporary name first (weights beside it too, for big models): a failed write
    leaves the previous export as it was. A requested opset the exporter could not convert to is
    a UserError, before anything is written."""
    try:
        import onnx  # noqa: F401  (the exporter needs onnx and onnxscript; say so before it fails deep inside)
        import onnxscript  # noqa: F401
    except ImportError as error:
        raise UserError(f"--format onnx needs the {error.name} package: {EXTRAS}") from None
    with warnings.catch_warnings(), quiet_onnx_exporter():
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
    written = program.model.opset_imports[""]
    if opset is not None and written != opset:
        raise UserError(f"--opset {opset}: the exporter cannot convert this model to opset {opset} (it "
                        f"would write opset {written}); nothing was written. Leave --opset out (opset "
                        f"{written}), or try another")
    for key, value in {**meta, "opset": written}.items():
        program.model.metadata_props[key] = json.dumps(value)
    external = sum(p.numel() * p.element_size() for p in net.parameters()) > ONNX_SINGLE_FILE_BYTES
    write_files_via_temp(out, lambda tmp: program.save(str(tmp), external_data=external))
    return written


def trace(net: nn.Module, example: torch.Tensor, out: Path, meta: dict) -> None:
    """TorchScript by tracing, with ``meta`` as the archive's extra file classifier.json. The archive
    is built in memory and written through a temporary file: torch.jit.save on a full disk aborts
    the interpreter, and a failed write must leave the previous export as it was."""
    with warnings.catch_warnings(), torch.inference_mode(), quiet_transformers():
        # The tracer warns about ViT's checks of channels and image size, which the preprocessing
        # fixes, and of causal attention, which ViT never uses. TorchScript and torch.ao
        # quantization are deprecated since PyTorch 2.10 but still work.
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(net, example)
        archive = io.BytesIO()
        torch.jit.save(traced, archive, _extra_files={TORCHSCRIPT_META: json.dumps(meta)})
    atomic_write_bytes(out, archive.getvalue())


def quantize_int8(net: nn.Module) -> nn.Module:
    """Dynamic int8 quantization of every nn.Linear (weights int8, activations quantized on the fly)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation notice of torch.ao.quantization, see trace()
        return torch.ao.quantization.quantize_dynamic(net, {nn.Linear}, dtype=torch.qint8)
