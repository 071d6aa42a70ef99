"""One loader for every runnable form of a trained classifier: a checkpoint directory, or an
.onnx, OpenVINO .xml or TorchScript .pt export (read by export/runtimes.load_export). predict.py,
app.py and train.py --evaluate all load through ``load_for_prediction``, so they run a model the
same way and agree."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from vitclassifier.data.transforms import Preprocessing
from vitclassifier.devices import autocast_dtype, pick_device
from vitclassifier.errors import UserError
from vitclassifier.export.files import CPU_ONLY_SUFFIXES, EXPORT_SUFFIXES, is_export
from vitclassifier.export.runtimes import OpenVinoModel, load_export
from vitclassifier.export.writers import quantize_int8, read_meta
from vitclassifier.model.attention import run_in_bf16
from vitclassifier.model.checkpoint import load_checkpoint, read_info
from vitclassifier.model.runnable import Runnable
from vitclassifier.model.trust import check_temperature
from vitclassifier.reporting.multilabel import DEFAULT_THRESHOLD, PROBLEM_TYPE
from vitclassifier.text import printable


@dataclass
class LoadedModel:
    """A model ready to predict with, and everything needed to feed it and read its answers."""
    model: Runnable
    prep: Preprocessing
    labels: list[str]
    temperature: float  # the calibrated softmax temperature: confidences are softmax(logits / T)
    dtype: torch.dtype | None  # autocast precision (None: fp32, or a runtime that chose its own)
    device: torch.device
    thresholds: list[float] | None = None  # several labels per image: each label's, on sigmoid(logits)

    @property
    def multi_label(self) -> bool:
        return self.thresholds is not None


def multi_label_thresholds(problem_type: object, saved: object, labels: list[str], where: str
                           ) -> list[float] | None:
    """A multi-label model's threshold per label (what it saved, else 0.5), checked as input: each a number
    from 0 to 1. None: one class per image."""
    if problem_type != PROBLEM_TYPE:
        return None
    saved = saved if isinstance(saved, dict) else {}
    values = [saved.get(name, DEFAULT_THRESHOLD) for name in labels]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1 for v in values):
        raise UserError(f"cannot load {printable(where)}: its thresholds must be numbers from 0 to 1")
    return [float(v) for v in values]


def prediction_device(model_path: Path, device: str, runtime: str = "pytorch") -> torch.device:
    """Where ``model_path`` runs: OpenVINO and TorchScript exports (and --runtime openvino) on the CPU."""
    on_cpu = runtime == "openvino" or Path(model_path).suffix in CPU_ONLY_SUFFIXES
    return pick_device("cpu" if on_cpu else device)


def prepare_model(
    model: nn.Module,
    device: torch.device,
    precision: str = "fp32",
    quantize: bool = False,
    compile_model: bool = False,
    runtime: str = "pytorch",
) -> tuple[Runnable, torch.dtype | None]:
    """The model made fast for inference on ``device``, and the dtype to autocast to (None: fp32)."""
    if runtime == "openvino":
        if device.type != "cpu":
            raise UserError(
                "--runtime openvino runs on the CPU; add --device cpu, or leave --runtime out on a GPU"
            )
        return OpenVinoModel.from_torch(model, bf16=autocast_dtype(device, precision) == torch.bfloat16), None
    if quantize:
        if device.type != "cpu":
            raise UserError("--quantize uses int8 CPU kernels; on a GPU use --precision bf16 or fp16 instead")
        return quantize_int8(model.eval()), None
    model.to(device).eval()
    dtype = autocast_dtype(device, precision)
    run_in_bf16(model, device, dtype, training=False)
    if compile_model:
        from torch._inductor import config as inductor_config

        inductor_config.freezing = True  # inference only: constant-fold the weights into the kernels
        model = torch.compile(model)
    return model, dtype


def load_for_prediction(
    path: Path,
    device: torch.device,
    precision: str = "auto",
    quantize: bool = False,
    compile_model: bool = False,
    runtime: str = "pytorch",
) -> LoadedModel:
    """A checkpoint directory or an export, ready to predict with on ``device``."""
    path = Path(path)
    if is_export(path):  # the exported graph runs as it was exported
        if quantize or compile_model or runtime != "pytorch":
            raise UserError(
                f"--model {path} is an export and runs as it was exported: leave out --quantize, "
                f"--compile and --runtime"
            )
        model = load_export(path, autocast_dtype(device, precision) == torch.bfloat16)
        prep, labels = read_meta(model.meta, path)  # checked, as is everything below: an export is input
        model.expect(len(labels), prep.image_size)
        temperature = check_temperature(model.meta.get("temperature", 1.0), model.where)
        meta = model.meta
        thresholds = multi_label_thresholds(meta.get("problem_type"), meta.get("thresholds"), labels,
                                            str(path))
        return LoadedModel(model, prep, labels, temperature, None, device, thresholds)
    if path.is_file():
        raise UserError(f"--model {printable(path)} is a file this tool cannot run: give a checkpoint folder "
                        f"(e.g. checkpoints/best) or an export made by export.py, recognised by its suffix: "
                        f"{', '.join(EXPORT_SUFFIXES)} (ONNX; OpenVINO; TorchScript, i.e. .torchscript.pt "
                        f"and .int8.pt)")
    model, prep, labels = load_checkpoint(path)
    # the temperature still to divide by: 1 when calibration is folded into the head (read_info checks it)
    info = read_info(path)
    temperature = info.get("temperature", 1.0)
    thresholds = multi_label_thresholds(getattr(model.config, "problem_type", None), info.get("thresholds"),
                                        labels, str(path))
    runnable, dtype = prepare_model(model, device, precision, quantize, compile_model, runtime)
    return LoadedModel(runnable, prep, labels, temperature, dtype, device, thresholds)
