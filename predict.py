"""Predict labels with confidences for new images using a trained checkpoint or an export of it.

    python predict.py --image sample.jpg --top-k 3
    python predict.py --image photos/ "more/*.png" --json predictions.json --visualize grid.png
    python predict.py --image photos/ --top-k 3 --explain explanations/

Preprocessing is the very function validation uses, built from what the checkpoint carries.
This file only reads the command line; the work is in vitclassifier.inference.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vitclassifier.cli import add_device_option, add_precision_option, new_parser
from vitclassifier.devices import keep_freed_memory
from vitclassifier.errors import UserError, report_user_error
from vitclassifier.export.files import CPU_ONLY_SUFFIXES, is_export, model_files
from vitclassifier.files import check_output_file, refuse_inside
from vitclassifier.inference.explain import NEEDS_CHECKPOINT, check_explain_folder, explain_to_folder
from vitclassifier.inference.loading import load_for_prediction, prediction_device
from vitclassifier.inference.predict import expand_inputs, predict, predictions_json, print_table, write_json
from vitclassifier.model.relevance import METHODS
from vitclassifier.reporting.plots import MAX_PICTURES, write_predictions
from vitclassifier.text import printable

PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".pdf", ".svg", ".webp", ".tif", ".tiff")  # --visualize


def build_parser() -> argparse.ArgumentParser:
    p = new_parser("Predict the top-k labels of images with a trained ViT classifier.")
    p.add_argument("--image", nargs="+", required=True, metavar="PATH",
                   help="image files, folders (searched recursively) or glob patterns")
    p.add_argument("--model", type=Path, default=Path("checkpoints/best"),
                   help="checkpoint directory, or a model made by export.py: .onnx (run with onnxruntime), "
                        ".xml (OpenVINO IR, e.g. --format openvino-int8: the fastest on CPUs) or .pt "
                        "(TorchScript)")
    p.add_argument("--top-k", type=int, default=3, help="how many labels to show per image")
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass")
    p.add_argument("--min-confidence", type=float, default=0.0, metavar="P",
                   help="answer 'unknown' (with the best guess shown) when the top confidence is below P "
                        "(0-1)")
    p.add_argument("--tta", action="store_true",
                   help="test-time augmentation: average over the image, its mirror and a zoomed centre "
                        "(and its mirror); 4x the compute")
    add_device_option(p, "where to run")
    add_precision_option(p)
    p.add_argument("--quantize", action="store_true",
                   help="CPU only: int8 weights for every linear layer (dynamic quantization); the fastest "
                        "on CPUs without an export step (export.py --format openvino-int8 is faster "
                        "still); check agreement with benchmarks/speed.py")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the model first (a slow start, see docs/performance.md): pays for "
                        "folders of thousands of images")
    p.add_argument("--runtime", default="pytorch", choices=["pytorch", "openvino"],
                   help="openvino (CPU, needs `pip install openvino`): convert the model in memory (a few "
                        "seconds) and run it with OpenVINO, bf16 where the CPU has it; batches about as "
                        "fast as --quantize, without int8 rounding; for int8 in OpenVINO export the model "
                        "with export.py --format openvino-int8")
    p.add_argument("--json", metavar="FILE", help="also write the predictions as JSON to FILE ('-': stdout)")
    p.add_argument("--visualize", type=Path, metavar="OUT.png",
                   help=f"save the images with their top-k labels and confidence bars (first {MAX_PICTURES})")
    p.add_argument("--explain", type=Path, metavar="DIR",
                   help="show where the model looked: for every image, DIR/NAME.jpg (the image and one "
                        "heatmap per top-k class) and DIR/NAME.npy (the maps, float32, k x H x W); needs "
                        "the checkpoint directory, not an export (see docs/explain.md)")
    p.add_argument("--explain-method", default="relevance", choices=METHODS,
                   help="relevance: gradient-weighted attention relevance (Chefer et al. 2021), one map per "
                        "class; rollout: attention rollout (Abnar & Zuidema 2020), class-agnostic: the same "
                        "map for every class")
    return p


def option_problems(args: argparse.Namespace) -> list[str]:
    """What is wrong with these options, one sentence each naming the option."""
    on_cpu_only = args.device not in ("auto", "cpu")
    checks = [
        (args.top_k >= 1, "--top-k must be at least 1"),
        (args.batch_size >= 1, "--batch-size must be at least 1"),
        (0 <= args.min_confidence <= 1, "--min-confidence is a probability from 0 to 1"),
        (args.runtime != "openvino" or not (args.quantize or args.compile or on_cpu_only),
         "--runtime openvino runs on the CPU and does its own optimising: leave out --quantize, --compile "
         "and --device cuda/mps (for int8 with OpenVINO, export once: python export.py --format "
         "openvino-int8)"),
        (not is_export(args.model) or not (args.quantize or args.compile or args.runtime != "pytorch"),
         f"--model {args.model} is an export and runs as it was exported: leave out --quantize, "
         f"--compile and --runtime"),
        (args.model.suffix not in CPU_ONLY_SUFFIXES or not on_cpu_only,
         f"--model {args.model} is an export that runs on the CPU: leave out --device"),
    ]
    return [message for ok, message in checks if not ok]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    problems = option_problems(args)
    if problems:
        parser.error("; ".join(problems))
    return args


def check_explain(args: argparse.Namespace) -> None:
    """--explain runs the checkpoint in PyTorch, with gradients, on the plain view of each image."""
    if is_export(args.model):
        raise UserError(f"--explain: {NEEDS_CHECKPOINT}; --model {args.model} is an export: pass the "
                        f"checkpoint directory it was made from, e.g. checkpoints/best")
    if args.tta or args.quantize or args.compile or args.runtime != "pytorch":
        raise UserError("--explain explains the plain PyTorch model on the image itself: leave out --tta, "
                        "--quantize, --compile and --runtime")
    check_explain_folder(args.explain, args.model, args.image)


def check_outputs(args: argparse.Namespace) -> None:
    """Before the model is loaded: --json and --visualize can be written (their folders exist, they
    are not folders, the disk takes them) and are not a file of the model; --explain can be too."""
    if args.explain:
        check_explain(args)
    outputs = [("--json", Path(args.json))] if args.json and args.json != "-" else []
    if args.visualize:
        if args.visualize.suffix.lower() not in PICTURE_SUFFIXES:
            raise UserError(f"--visualize {args.visualize} needs a picture extension "
                            f"({', '.join(PICTURE_SUFFIXES)}), e.g. {args.visualize}.png")
        outputs.append(("--visualize", args.visualize))
    for option, path in outputs:
        for protected in model_files(args.model):
            refuse_inside(path, protected, option, "the model")
        check_output_file(path, option)


def run(args: argparse.Namespace) -> int:
    check_outputs(args)
    device = prediction_device(args.model, args.device, args.runtime)
    loaded = load_for_prediction(
        args.model, device, args.precision, args.quantize, args.compile, args.runtime
    )
    paths, failures = expand_inputs(args.image)
    if args.top_k > len(loaded.labels):
        print(
            f"note: --top-k {args.top_k} capped at the model's {len(loaded.labels)} classes", file=sys.stderr
        )
    if args.explain:
        results, bad = explain_to_folder(loaded, paths, args.top_k, args.batch_size, args.explain_method,
                                         args.explain, args.min_confidence)
    else:
        results, bad = predict(loaded, paths, args.top_k, args.batch_size, args.tta, args.min_confidence)
    failures += bad
    print_table(results, file=sys.stderr if args.json == "-" else sys.stdout)
    for path, reason in failures:
        print(f"error: {printable(path)}: {printable(reason)}", file=sys.stderr)
    if args.json:  # written atomically; a disk that filled up since check_outputs is one error line
        write_json(args.json, predictions_json(args.model, results, failures))
    if args.visualize and results:
        write_predictions(results, args.visualize)
        print(f"Saved the picture to {args.visualize}", file=sys.stderr)
    if args.explain and results:
        print(f"Explanations of {len(results)} image(s): {printable(args.explain)}/ (NAME.jpg, NAME.npy)",
              file=sys.stderr)
    if failures:
        print(
            f"{len(failures)} of {len(results) + len(failures)} input(s) could not be predicted",
            file=sys.stderr,
        )
    return 1 if failures or not results else 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    keep_freed_memory()
    try:
        return run(args)
    except UserError as error:
        return report_user_error(error)
    except KeyboardInterrupt:
        print("\nInterrupted; nothing was written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
