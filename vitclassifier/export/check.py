"""Exporting a checkpoint: write the artefact, load it back as predict.py would (load_export),
compare it with PyTorch on real or drawn images, time both. export.py parses its options into an
``ExportConfig`` and calls ``export_checkpoint``."""
from __future__ import annotations

import json
import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from vitclassifier.data.dataset import ImageFolderDataset
from vitclassifier.data.folders import list_images
from vitclassifier.data.transforms import Preprocessing, eval_transform
from vitclassifier.devices import cpu_supports_bf16
from vitclassifier.errors import UserError
from vitclassifier.export.files import FORMATS, export_files, sidecar
from vitclassifier.export.openvino import convert, import_openvino, quantize_static, save_ir
from vitclassifier.export.runtimes import load_export
from vitclassifier.export.writers import ONNX_MIN_OPSET, describe, export_onnx, quantize_int8, trace
from vitclassifier.files import atomic_write_bytes, check_output_file, refuse_inside
from vitclassifier.model.checkpoint import load_checkpoint, read_info
from vitclassifier.model.runnable import LogitsOnly
from vitclassifier.options import field_problems, option, type_problems
from vitclassifier.reporting.multilabel import threshold_map, thresholds_of

EXACT_FORMATS = ("onnx", "torchscript")  # fp32 as PyTorch runs it; the others round to int8 or bf16
TOLERANCE = 1e-3  # max |logit difference| accepted for the exact formats
MIN_AGREEMENT = 0.99  # top-1 agreement with PyTorch below which the other formats get a warning
CHECK_IMAGES = 64  # at most this many images from --check-images are compared
CALIBRATION_IMAGES = 64  # and from --calibration-images calibrate openvino-int8 (time: docs/performance.md)
BENCH_BATCH = 32
TURN_PAUSE = 0.05  # seconds before each timed call (see timed_in_turns)
SPREAD_LIMIT = 0.25  # per-round speed-ups further apart than this (max / min - 1) are noise


@dataclass(kw_only=True)
class ExportConfig:
    """export.py's options, declared once (vitclassifier/options.py builds the parser and checks them)."""
    model: Path = option("checkpoint directory", Path("checkpoints/best"))
    format: str = option(
        "onnx: ONNX Runtime and other engines; torchscript: traced fp32 for PyTorch without Python model "
        "code; int8: dynamically quantized Linear layers, traced; openvino: OpenVINO IR (runs bf16 on CPUs "
        "that have it); openvino-int8: OpenVINO IR with int8 matmuls calibrated on --calibration-images, the "
        "fastest on CPUs", required=True, choices=list(FORMATS))
    out: Path | None = option("where to write (default: the checkpoint folder's name plus "
                              + ", ".join(FORMATS.values()) + ", beside it; never inside it)", None)
    overwrite: bool = option("replace an existing export at --out (it is replaced only once the new one is "
                             "completely written)", False)
    check_images: Path | None = option(
        f"compare on images from this folder (up to {CHECK_IMAGES}; default: 16 synthetic shapes)", None,
        metavar="DIR")
    calibration_images: Path = option(
        f"openvino-int8: images like those it will see (up to {CALIBRATION_IMAGES}, spread over the class "
        "folders) to measure each layer's int8 range on; train.py's --data is best", Path("data"),
        metavar="DIR")
    opset: int | None = option(f"ONNX opset version, {ONNX_MIN_OPSET} or later (default: the exporter's)",
                               None)
    bench_rounds: int = option(f"timed batches of {BENCH_BATCH} per model for the speed comparison (0: skip "
                               "it)", 5, at_least=0, problem="--bench-rounds must not be negative")
    threads: int | None = option("CPU threads for PyTorch and onnxruntime (default: theirs, one per core); 1 "
                                 "gives steadier timings on a busy machine", None, at_least=1)

    def problems(self) -> list[str]:
        """What is wrong with these options, one sentence each naming the option."""
        wrong = type_problems(self) or field_problems(self)
        if wrong or self.opset is None:
            return wrong
        if self.format != "onnx":
            return [f"--opset is for --format onnx only, not {self.format}"]
        if not ONNX_MIN_OPSET <= self.opset <= newest_opset():
            return [f"--opset must be from {ONNX_MIN_OPSET} (the first with ViT's LayerNormalization) to "
                    f"{newest_opset()} (the newest this onnx package knows), got {self.opset}"]
        return []


def newest_opset() -> int:
    """The newest ONNX opset the installed onnx package knows (without onnx: no upper bound here,
    the export stops on the missing package)."""
    try:
        import onnx
    except ImportError:
        return sys.maxsize
    return onnx.defs.onnx_opset_version()


def check_export_outputs(config: ExportConfig) -> None:
    """Before loading anything: the export may be written where asked. Never into the checkpoint
    folder (it would replace the weights being read), never over an existing export without
    --overwrite, never into a missing or read-only folder; the input folders must be folders."""
    refuse_inside(config.out, config.model, "--out", "the checkpoint folder")
    out, *others = export_files(config.out, config.format)
    check_output_file(out, "--out", config.overwrite)
    for path in others:  # written with it: an old one belongs to the export at --out
        check_output_file(path, f"--out {out}: its file", config.overwrite or not out.exists())
    if config.check_images is not None and not config.check_images.is_dir():
        raise UserError(f"--check-images {config.check_images} is not a folder; give a folder of images")
    if config.format == "openvino-int8" and not config.calibration_images.is_dir():
        raise UserError(
            f"--calibration-images {config.calibration_images} is not a folder: give images like "
            f"those the model will predict, to calibrate int8 on (train.py's --data is best)"
        )


def check_batch(prep: Preprocessing, folder: Path | None, limit: int = CHECK_IMAGES,
                option: str = "--check-images") -> tuple[torch.Tensor, str]:
    """Up to ``limit`` preprocessed images from ``folder`` (spread over it), or 16 drawn shapes."""
    transform = eval_transform(prep)
    if folder is None:
        from vitclassifier.data.synthetic import SHAPES, draw_shape
        rng = random.Random(0)
        images = [transform(draw_shape(shape, 96, rng)) for shape in SHAPES for _ in range(2)]
        return torch.stack(images), f"{len(images)} synthetic images"
    if not folder.is_dir():
        raise UserError(f"{option} {folder} is not a folder")
    paths = list_images(folder)
    paths = paths[::max(1, len(paths) // limit)][:limit]  # spread over the classes' sub-folders
    dataset = ImageFolderDataset([(path, 0) for path in paths], transform, prep.resize_size)
    images = [item[0] for item in (dataset[i] for i in range(len(dataset))) if item[0] is not None]
    if not images:
        raise UserError(f"{option} {folder} has no readable images")
    return torch.stack(images), f"{len(images)} images from {folder}"


def timed_in_turns(runs: list, batch: torch.Tensor, rounds: int,
                   clock: Callable[[], float] = time.perf_counter,
                   pause: Callable[[float], object] = time.sleep) -> list[list[float]]:
    """Seconds per call of each of ``runs`` on ``batch``, timed in turns (a, b, a, b, ...) after two
    warm-up rounds, so that other work on the machine slows every model alike. A short pause before
    each call lets onnxruntime's threads, which spin for a while after a run, go to sleep first.
    (``clock`` and ``pause``: tests give their own, so that no test depends on a quiet machine.)"""
    seconds: list[list[float]] = [[] for _ in runs]
    with torch.inference_mode():
        for round_number in range(rounds + 2):
            for run, times in zip(runs, seconds):
                pause(TURN_PAUSE)
                start = clock()
                run(batch)
                if round_number >= 2:
                    times.append(clock() - start)
    return seconds


def speed_report(engine: str, base: list[float], exported: list[float], batch: int,
                 threads: int | None) -> str:
    """The two speeds (median images/s, and their range over the rounds) and the speed-up, which is
    left out when it varied by more than SPREAD_LIMIT between rounds: then it says nothing reliable."""
    def speed(seconds: list[float]) -> str:
        rates = sorted(batch / s for s in seconds)
        return f"{statistics.median(rates):9.1f}  ({rates[0]:.1f} to {rates[-1]:.1f})"

    ratios = [b / e for b, e in zip(base, exported)]  # each round's two turns saw the same machine
    low, high = min(ratios), max(ratios)
    if high / low - 1 > SPREAD_LIMIT:
        verdict = (f"speed-up left out: it varied from {low:.2f}x to {high:.2f}x between rounds (a busy "
                   f"machine); run again with more --bench-rounds, --threads 1 or on a quieter machine")
    else:
        verdict = f"{statistics.median(ratios):.2f}x PyTorch's speed"
    return (f"Speed at batch {batch}, {threads or 'all'} thread(s), images/s, median (range) of "
            f"{len(base)} rounds taken in turns:\n  {'PyTorch fp32':<28}{speed(base)}\n"
            f"  {engine:<28}{speed(exported)}\n  {verdict}")


def write_openvino(net: nn.Module, prep: Preprocessing, meta: dict, config: ExportConfig) -> None:
    """An OpenVINO IR; for openvino-int8, calibrated on --calibration-images (recorded in ``meta``)."""
    import_openvino(f"--format {config.format}")
    converted = convert(net, prep.image_size)
    if config.format == "openvino-int8":
        if not config.calibration_images.is_dir():
            raise UserError(
                f"--calibration-images {config.calibration_images} is not a folder: give images like "
                f"those the model will predict, to calibrate int8 on (train.py's --data is best)"
            )
        calibration, meta["calibrated_on"] = check_batch(
            prep, config.calibration_images, CALIBRATION_IMAGES, "--calibration-images"
        )
        print(f"Calibrating the int8 ranges on {meta['calibrated_on']}")
        converted = quantize_static(converted, calibration)
    save_ir(converted, config.out, meta)


def write_artefact(
    net: nn.Module, example: torch.Tensor, prep: Preprocessing, meta: dict, config: ExportConfig
) -> str:
    """Write ``config.out`` in ``config.format``; an ONNX export adds its opset to ``meta``, an int8
    OpenVINO one its calibration images. Returns the engine's name for the report."""
    if config.format.startswith("openvino"):
        write_openvino(net, prep, meta, config)
        return "OpenVINO int8" if config.format == "openvino-int8" else "OpenVINO"
    if config.format == "onnx":
        meta["opset"] = export_onnx(net, example, config.out, meta, config.opset)
        return f"ONNX Runtime (opset {meta['opset']})"
    int8 = config.format == "int8"
    trace(quantize_int8(net) if int8 else net, example, config.out, meta)
    return f"TorchScript {'int8' if int8 else 'fp32'}"


def compare(reference: torch.Tensor, candidate: torch.Tensor, described: str, config: ExportConfig) -> bool:
    """Print how far the export's logits are from PyTorch's; False if an exact format is too far."""
    difference = (reference - candidate).abs().max().item()
    agree = (reference.argmax(1) == candidate.argmax(1)).sum().item()
    count = len(reference)
    print(
        f"Checked on {described}: max |logit difference| {difference:.2e}, "
        f"top-1 agreement {agree}/{count} ({100 * agree / count:.1f}%)"
    )
    if config.format in EXACT_FORMATS and difference > TOLERANCE:
        print(
            f"error: the export differs from PyTorch by more than {TOLERANCE:g}; do not use it",
            file=sys.stderr,
        )
        return False
    if agree < MIN_AGREEMENT * count:
        print(
            f"warning: its top-1 answer differs from PyTorch's on {count - agree} of {count} images; "
            f"check on your own images (--check-images), or export an fp32 format",
            file=sys.stderr,
        )
    return True


def export_checkpoint(config: ExportConfig) -> bool:
    """Write, reload, compare and time one artefact; False if an exact export disagrees with PyTorch."""
    check_export_outputs(config)
    model, prep, labels = load_checkpoint(config.model)
    net = LogitsOnly(model).eval()
    images, described = check_batch(prep, config.check_images)
    batch = images.repeat(-(-BENCH_BATCH // len(images)), 1, 1, 1)[:BENCH_BATCH]
    with torch.inference_mode():
        reference = net(images)
    info = read_info(config.model)
    temperature = float(info.get("temperature", 1.0))  # calibrated by train.py
    several = getattr(model.config, "problem_type", None) == "multi_label_classification"
    meta = describe(prep, labels, config.model, config.format, temperature,
                    threshold_map(labels, thresholds_of(info, labels)) if several else None)
    # batch 2 as the example: tracing or exporting with 1 could bake that size into the graph
    engine = write_artefact(net, images[:2], prep, meta, config)
    described_json = sidecar(config.out)
    atomic_write_bytes(described_json, (json.dumps(meta, indent=2) + "\n").encode())
    print(f"Wrote {config.out} and {described_json.name} ({len(labels)} labels, {prep.image_size}px input)")

    exported = load_export(
        config.out, bf16=cpu_supports_bf16(), threads=config.threads
    )  # as predict.py runs it

    def run(pixels: torch.Tensor) -> torch.Tensor:
        return exported(pixel_values=pixels).logits

    with torch.inference_mode():
        exact_enough = compare(reference, run(images), described, config)
    if config.bench_rounds:
        base, exported_seconds = timed_in_turns([net, run], batch, config.bench_rounds)
        print(speed_report(engine, base, exported_seconds, BENCH_BATCH, config.threads))
    return exact_enough
