"""Export a trained checkpoint for serving: ONNX, TorchScript, int8 (dynamically quantized), or
OpenVINO IR, fp32 or int8 calibrated on your images (the fastest on CPUs).

    python export.py --model checkpoints/best --format onnx
    python export.py --model checkpoints/best --format int8 --check-images data/circle
    python export.py --model checkpoints/best --format openvino-int8 --calibration-images data

Every artefact carries what is needed to use it without this code: the label map and the
preprocessing, in a sidecar JSON (ARTEFACT.json) and inside the file itself (ONNX metadata_props,
the extra file "classifier.json" of a TorchScript archive, an OpenVINO IR's rt_info). Each export
is reloaded, compared with the PyTorch model on preprocessed images, and timed against it at batch 32.
predict.py runs every export as it runs checkpoints.
This file only reads the command line; the work is in vitclassifier.export.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from vitclassifier.cli import new_parser
from vitclassifier.errors import exit_code_of
from vitclassifier.export.check import (
    BENCH_BATCH,
    CALIBRATION_IMAGES,
    CHECK_IMAGES,
    ExportConfig,
    export_checkpoint,
)
from vitclassifier.export.files import FORMATS
from vitclassifier.export.writers import ONNX_MIN_OPSET


def build_parser() -> argparse.ArgumentParser:
    p = new_parser("Export a trained checkpoint to ONNX, TorchScript, int8 or OpenVINO, check it against "
                   "PyTorch and time it.")
    p.add_argument("--model", type=Path, default=Path("checkpoints/best"), help="checkpoint directory")
    p.add_argument("--format", required=True, choices=list(FORMATS),
                   help="onnx: ONNX Runtime and other engines; torchscript: traced fp32 for PyTorch without "
                        "Python model code; int8: dynamically quantized Linear layers, traced; openvino: "
                        "OpenVINO IR (runs bf16 on CPUs that have it); openvino-int8: OpenVINO IR with int8 "
                        "matmuls calibrated on --calibration-images, the fastest on CPUs")
    p.add_argument("--out", type=Path, help="where to write (default: the checkpoint folder's name plus "
                                           + ", ".join(FORMATS.values()) + ", beside it; never inside it)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing export at --out (it is replaced only once the new one is "
                        "completely written)")
    p.add_argument("--check-images", type=Path, metavar="DIR",
                   help=f"compare on images from this folder (up to {CHECK_IMAGES}; default: 16 synthetic "
                        f"shapes)")
    p.add_argument("--calibration-images", type=Path, default=Path("data"), metavar="DIR",
                   help=f"openvino-int8: images like those it will see (up to {CALIBRATION_IMAGES}, spread "
                        "over the class folders) to measure each layer's int8 range on; train.py's --data is "
                        "best")
    p.add_argument("--opset", type=int,
                   help=f"ONNX opset version, {ONNX_MIN_OPSET} or later (default: the exporter's)")
    p.add_argument("--bench-rounds", type=int, default=5,
                   help=f"timed batches of {BENCH_BATCH} per model for the speed comparison (0: skip it)")
    p.add_argument("--threads", type=int,
                   help="CPU threads for PyTorch and onnxruntime (default: theirs, one per core); 1 gives "
                        "steadier timings on a busy machine")
    return p


def newest_opset() -> int:
    """The newest ONNX opset the installed onnx package knows (without onnx: no upper bound here,
    the export stops on the missing package)."""
    try:
        import onnx
    except ImportError:
        return sys.maxsize
    return onnx.defs.onnx_opset_version()


def parse_args(argv: list[str] | None = None) -> ExportConfig:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.bench_rounds < 0:
        parser.error("--bench-rounds must not be negative")
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be at least 1")
    if args.opset is not None and args.format != "onnx":
        parser.error(f"--opset is for --format onnx only, not {args.format}")
    if args.opset is not None and not ONNX_MIN_OPSET <= args.opset <= newest_opset():
        parser.error(f"--opset must be from {ONNX_MIN_OPSET} (the first with ViT's LayerNormalization) to "
                     f"{newest_opset()} (the newest this onnx package knows), got {args.opset}")
    suffix = "." + FORMATS[args.format].rsplit(".", 1)[1]  # what predict.py recognises the model by
    if args.out is None:
        args.out = args.model.with_name(args.model.name + FORMATS[args.format])
    elif args.out.suffix != suffix:
        parser.error(f"--out must end in {suffix} for --format {args.format} (predict.py recognises the "
                     f"model by it)")
    return ExportConfig(**vars(args))


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(config.threads or threads)
    try:
        return exit_code_of(lambda: 0 if export_checkpoint(config) else 1)
    finally:  # called in-process (tests), a changed thread count would change later runs' float sums
        torch.set_num_threads(threads)


if __name__ == "__main__":
    sys.exit(main())
