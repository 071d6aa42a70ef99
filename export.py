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

import torch

from vitclassifier.errors import exit_code_of
from vitclassifier.export.check import ExportConfig, export_checkpoint
from vitclassifier.export.files import FORMATS
from vitclassifier.options import build_parser as build_options_parser


def build_parser() -> argparse.ArgumentParser:
    """ExportConfig's options (vitclassifier/export/check.py declares them)."""
    description = ("Export a trained checkpoint to ONNX, TorchScript, int8 or OpenVINO, check it against "
                   "PyTorch and time it.")
    return build_options_parser(description, ExportConfig)


def parse_args(argv: list[str] | None = None) -> ExportConfig:
    parser = build_parser()
    config = ExportConfig(**vars(parser.parse_args(argv)))
    problems = config.problems()
    if problems:
        parser.error("; ".join(problems))
    suffix = "." + FORMATS[config.format].rsplit(".", 1)[1]  # what predict.py recognises the model by
    if config.out is None:
        config.out = config.model.with_name(config.model.name + FORMATS[config.format])
    elif config.out.suffix != suffix:
        parser.error(f"--out must end in {suffix} for --format {config.format} (predict.py recognises the "
                     f"model by it)")
    return config


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
