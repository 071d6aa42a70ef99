"""Running exported models: ONNX Runtime, OpenVINO and TorchScript, each wrapped in the one
interface of model/runnable.py, with the metadata the export carries as ``.meta``; ``load_export``
picks one by the file's suffix."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from torch import nn

from vitclassifier.errors import UserError
from vitclassifier.export.files import ir_weights
from vitclassifier.export.openvino import convert, import_openvino
from vitclassifier.export.writers import EXTRAS, TORCHSCRIPT_META
from vitclassifier.model.runnable import ClassifierOutput, FixedRuntime
from vitclassifier.model.trust import first_line, refusal


class ExportRuntime(FixedRuntime):
    """An export whose metadata (``meta``) is input: ``expect`` compares the labels and image size it
    names with the graph's own sizes where the graph fixes them, and every answer's width is checked
    (the first batch tells when the graph leaves it open)."""
    meta: dict
    where = "export"
    graph_width: int | None = None  # outputs per image, when the graph fixes it
    graph_size: int | None = None  # the input's height = width, when the graph fixes it
    width: int | None = None  # the number of labels the answers must have

    def expect(self, labels: int, image_size: int) -> None:
        if self.graph_width is not None and self.graph_width != labels:
            raise refusal(self.where, f"its metadata names {labels} labels but the model has "
                                      f"{self.graph_width} outputs")
        if self.graph_size is not None and self.graph_size != image_size:
            raise refusal(self.where, f"its metadata says {image_size} px images but the model takes "
                                      f"{self.graph_size} px")
        self.width = labels

    def answer(self, logits: torch.Tensor) -> ClassifierOutput:
        if self.width is not None and (logits.ndim != 2 or logits.shape[1] != self.width):
            raise refusal(self.where, f"it answers with {list(logits.shape[1:])} outputs per image but "
                                      f"its metadata names {self.width} labels")
        return ClassifierOutput(logits)


def static_dims(dims: list) -> list[int | None]:
    """A graph's dimensions as ints, None where they are symbolic (e.g. the batch)."""
    return [d if isinstance(d, int) and not isinstance(d, bool) and d > 0 else None for d in dims]


def square_size(dims: list[int | None]) -> int | None:
    """The fixed image size of an NCHW input, when both sides are fixed and equal."""
    return dims[2] if len(dims) == 4 and dims[2] is not None and dims[2] == dims[3] else None


class OnnxModel(ExportRuntime):
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
        self.where = f"ONNX model {path}"
        graph_input, graph_output = self.session.get_inputs()[0], self.session.get_outputs()[0]
        self.input_name = graph_input.name
        self.graph_size = square_size(static_dims(graph_input.shape))
        self.graph_width = (static_dims(graph_output.shape) + [None, None])[1]
        try:
            metadata = self.session.get_modelmeta().custom_metadata_map
            self.meta = {key: json.loads(value) for key, value in metadata.items()}
        except ValueError:
            raise refusal(self.where, "its metadata is not JSON (was it exported by export.py?)") from None

    def __call__(self, pixel_values: torch.Tensor) -> ClassifierOutput:
        logits = self.session.run(None, {self.input_name: pixel_values.detach().cpu().numpy()})[0]
        return self.answer(torch.from_numpy(logits))


class OpenVinoModel(ExportRuntime):
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
        self.graph_size = square_size(openvino_dims(compiled.inputs[0].get_partial_shape()))
        self.graph_width = (openvino_dims(compiled.outputs[0].get_partial_shape()) + [None, None])[1]

    @classmethod
    def from_torch(cls, model: nn.Module, bf16: bool) -> OpenVinoModel:
        """predict.py --runtime openvino: the checkpoint's model converted in memory and compiled."""
        import_openvino("--runtime openvino")
        return cls(convert(model, getattr(model.config, "image_size", 224)), bf16)

    @classmethod
    def from_ir(cls, path: Path, bf16: bool) -> OpenVinoModel:
        """An IR written by export.py, compiled for the CPU, with its rt_info metadata as ``.meta``."""
        openvino = import_openvino(f"{path} is an OpenVINO model; running it")
        if not path.is_file() or not ir_weights(path).is_file():
            raise UserError(
                f"OpenVINO model {path} (and its .bin beside it) not found. "
                f"Export one with `python export.py --format openvino-int8`"
            )
        try:
            converted = openvino.Core().read_model(str(path))
        except RuntimeError as error:  # OpenVINO's report of a damaged .xml or .bin
            raise refusal(f"OpenVINO model {path}", first_line(error)) from None
        if not converted.has_rt_info(["classifier", "labels"]):
            raise UserError(f"{path} has no label map in its metadata; export it with export.py")
        info = converted.get_rt_info()["classifier"]
        try:
            meta = {key: json.loads(info[key].astype(str)) for key in info.keys()}
        except ValueError:
            raise refusal(f"OpenVINO model {path}", "its metadata is not JSON (was it exported by "
                                                    "export.py?)") from None
        try:
            model = cls(converted, bf16, meta)
        except RuntimeError as error:  # a graph OpenVINO read but cannot compile
            raise refusal(f"OpenVINO model {path}", first_line(error)) from None
        model.where = f"OpenVINO model {path}"
        return model

    def __call__(self, pixel_values: torch.Tensor) -> ClassifierOutput:
        logits = self.request.infer([pixel_values.detach().cpu().numpy()])[0]
        return self.answer(torch.tensor(logits))  # a copy: the next call reuses OpenVINO's buffer


def openvino_dims(shape) -> list[int | None]:
    """An OpenVINO partial shape as static_dims does it (an empty list when even its rank is open)."""
    if not shape.rank.is_static:
        return []
    return static_dims([dim.get_length() if dim.is_static else None for dim in shape])


class TorchScriptModel(ExportRuntime):
    """A traced TorchScript archive from export.py (fp32 or int8), run on the CPU. TorchScript is code:
    load archives only from sources you trust (the README's Safety section)."""

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
            raise UserError(f"cannot load TorchScript model {path}: {first_line(error)}") from None
        if not isinstance(self.meta, dict):
            raise refusal(f"TorchScript model {path}", "its metadata is not a JSON object")
        self.where = f"TorchScript model {path}"

    def __call__(self, pixel_values: torch.Tensor) -> ClassifierOutput:
        logits = self.module(pixel_values.cpu())
        if not isinstance(logits, torch.Tensor):
            raise refusal(self.where, f"it answers with a {type(logits).__name__}, not a tensor of logits")
        return self.answer(logits)


def load_export(
    path: Path, bf16: bool, threads: int | None = None
) -> OnnxModel | OpenVinoModel | TorchScriptModel:
    """An export made by export.py, by its suffix. ``bf16``: OpenVINO may compute in bf16;
    ``threads``: onnxruntime's thread count (None: one per core)."""
    if path.suffix == ".onnx":
        return OnnxModel(path, threads)
    if path.suffix == ".xml":
        return OpenVinoModel.from_ir(path, bf16)
    return TorchScriptModel(path)
