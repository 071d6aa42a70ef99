"""Running exported models: ONNX Runtime, OpenVINO and TorchScript, each wrapped in the one
interface of model/runnable.py, with the metadata the export carries as ``.meta``."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from torch import nn

from vitclassifier.errors import UserError
from vitclassifier.model.exporters import EXTRAS, TORCHSCRIPT_META
from vitclassifier.model.openvino import convert, import_openvino
from vitclassifier.model.runnable import ClassifierOutput, FixedRuntime


class OnnxModel(FixedRuntime):
    """An ONNX Runtime session; onnxruntime picked its execution provider when it was made."""

    def __init__(self, path: Path, threads: int | None = None):
        try:
            import onnxruntime
        except ImportError:
            raise UserError(
                f"{path} is an ONNX model; running it needs the onnxruntime package: {EXTRAS}"
            ) from None
        if not path.is_file():
            raise UserError(f"ONNX model {path} not found. Export one with `python export.py --format onnx`")
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads or 0  # 0: onnxruntime's choice, one per core
        try:
            self.session = onnxruntime.InferenceSession(
                str(path), options, providers=onnxruntime.get_available_providers()
            )
        except Exception as error:  # onnxruntime raises its own exception types for unreadable models
            raise UserError(f"cannot load ONNX model {path}: {str(error).splitlines()[0]}") from None
        self.input_name = self.session.get_inputs()[0].name
        try:
            metadata = self.session.get_modelmeta().custom_metadata_map
            self.meta = {key: json.loads(value) for key, value in metadata.items()}
        except ValueError:
            raise UserError(f"{path} was not exported by export.py (its metadata is not JSON)") from None

    def __call__(self, pixel_values: torch.Tensor) -> ClassifierOutput:
        logits = self.session.run(None, {self.input_name: pixel_values.detach().cpu().numpy()})[0]
        return ClassifierOutput(torch.from_numpy(logits))


class OpenVinoModel(FixedRuntime):
    """An OpenVINO model compiled for the CPU. ``meta``: what an exported IR carries (labels,
    preprocessing); empty for a model converted in memory."""

    def __init__(self, converted, bf16: bool, meta: dict | None = None):
        openvino = import_openvino("OpenVINO")
        compiled = openvino.Core().compile_model(
            converted,
            "CPU",
            {
                "PERFORMANCE_HINT": "LATENCY",  # one request at a time, on every core
                "INFERENCE_PRECISION_HINT": "bf16" if bf16 else "f32",
            },
        )
        self.request = compiled.create_infer_request()
        self.meta = meta or {}

    @classmethod
    def from_torch(cls, model: nn.Module, bf16: bool) -> OpenVinoModel:
        """predict.py --runtime openvino: the checkpoint's model converted in memory and compiled."""
        import_openvino("--runtime openvino")
        return cls(convert(model, getattr(model.config, "image_size", 224)), bf16)

    @classmethod
    def from_ir(cls, path: Path, bf16: bool) -> OpenVinoModel:
        """An IR written by export.py, compiled for the CPU, with its rt_info metadata as ``.meta``."""
        openvino = import_openvino(f"{path} is an OpenVINO model; running it")
        if not path.is_file() or not path.with_suffix(".bin").is_file():
            raise UserError(
                f"OpenVINO model {path} (and its .bin beside it) not found. "
                f"Export one with `python export.py --format openvino-int8`"
            )
        converted = openvino.Core().read_model(str(path))
        if not converted.has_rt_info(["classifier", "labels"]):
            raise UserError(f"{path} has no label map in its metadata; export it with export.py")
        info = converted.get_rt_info()["classifier"]
        return cls(converted, bf16, {key: json.loads(info[key].astype(str)) for key in info.keys()})

    def __call__(self, pixel_values: torch.Tensor) -> ClassifierOutput:
        logits = self.request.infer([pixel_values.detach().cpu().numpy()])[0]
        return ClassifierOutput(torch.tensor(logits))  # a copy: the next call reuses OpenVINO's buffer


class TorchScriptModel(FixedRuntime):
    """A traced TorchScript archive from export.py (fp32 or int8), run on the CPU."""

    def __init__(self, path: Path):
        if not path.is_file():
            raise UserError(
                f"TorchScript model {path} not found. Export one with `python export.py --format torchscript`"
            )
        extra = {TORCHSCRIPT_META: ""}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # TorchScript's deprecation notice
                self.module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
            self.meta = json.loads(extra[TORCHSCRIPT_META] or "{}")
        except (RuntimeError, ValueError) as error:
            raise UserError(f"cannot load TorchScript model {path}: {str(error).splitlines()[0]}") from None

    def __call__(self, pixel_values: torch.Tensor) -> ClassifierOutput:
        return ClassifierOutput(self.module(pixel_values.cpu()))
