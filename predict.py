"""Predict labels with confidences for new images using a trained checkpoint or an export of it.

    python predict.py --image sample.jpg --top-k 3
    python predict.py --image photos/ "more/*.png" --json predictions.json --visualize grid.png
    python predict.py --image photos/ --top-k 3 --explain explanations/
    python predict.py --image photos/ --out predictions.jsonl        # millions of images: docs/scale.md
    python predict.py --data labels.csv --out predictions.csv        # predicted and scored

Preprocessing is the very function validation uses, built from what the checkpoint carries.
This file only reads the command line; the work is in vitclassifier.inference.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vitclassifier.devices import keep_freed_memory
from vitclassifier.errors import UserError, report_user_error
from vitclassifier.export.files import is_export, model_files
from vitclassifier.files import check_output_file, refuse_inside
from vitclassifier.inference.bulk import predict_many
from vitclassifier.inference.explain import NEEDS_CHECKPOINT, check_explain_folder, explain_to_folder
from vitclassifier.inference.loading import load_for_prediction, prediction_device
from vitclassifier.inference.options import PredictConfig
from vitclassifier.inference.predict import expand_inputs, predict, predictions_json, print_table, write_json
from vitclassifier.options import build_parser as build_options_parser
from vitclassifier.reporting.plots import write_predictions
from vitclassifier.text import printable

PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".pdf", ".svg", ".webp", ".tif", ".tiff")  # --visualize


def build_parser() -> argparse.ArgumentParser:
    """PredictConfig's options (vitclassifier/inference/options.py declares them)."""
    description = "Predict the top-k labels of images with a trained ViT classifier."
    return build_options_parser(description, PredictConfig)


def parse_args(argv: list[str] | None = None) -> PredictConfig:
    parser = build_parser()
    config = PredictConfig(**vars(parser.parse_args(argv)))
    problems = config.problems()
    if problems:
        parser.error("; ".join(problems))
    return config


def check_explain(args: PredictConfig) -> None:
    """--explain runs the checkpoint in PyTorch, with gradients, on the plain view of each image."""
    if is_export(args.model):
        raise UserError(f"--explain: {NEEDS_CHECKPOINT}; --model {args.model} is an export: pass the "
                        f"checkpoint directory it was made from, e.g. checkpoints/best")
    if args.tta or args.quantize or args.compile or args.runtime != "pytorch":
        raise UserError("--explain explains the plain PyTorch model on the image itself: leave out --tta, "
                        "--quantize, --compile and --runtime")
    check_explain_folder(args.explain, args.model, args.image)


def check_outputs(args: PredictConfig) -> None:
    """Before the model is loaded: --json and --visualize can be written (their folders exist, they
    are not folders, the disk takes them) and are not a file of the model; --explain can be too."""
    if args.explain:
        check_explain(args)
    outputs = [("--json", Path(args.json))] if args.json and args.json != "-" else []
    outputs += [("--out", args.out)] if args.out else []
    if args.visualize:
        if args.visualize.suffix.lower() not in PICTURE_SUFFIXES:
            raise UserError(f"--visualize {args.visualize} needs a picture extension "
                            f"({', '.join(PICTURE_SUFFIXES)}), e.g. {args.visualize}.png")
        outputs.append(("--visualize", args.visualize))
    for option, path in outputs:
        for protected in model_files(args.model):
            refuse_inside(path, protected, option, "the model")
        check_output_file(path, option)


def run(args: PredictConfig) -> int:
    check_outputs(args)
    if args.out or args.data:  # streamed into --out, resumable, torchrun-able: docs/scale.md
        return predict_many(args)
    device = prediction_device(args.model, args.device, args.runtime)
    loaded = load_for_prediction(
        args.model, device, args.precision, args.quantize, args.compile, args.runtime
    )
    if args.threshold is not None:
        if not loaded.multi_label:
            raise UserError(f"--threshold is for a model of several labels per image; "
                            f"{printable(args.model)} gives one class per image: use --min-confidence")
        loaded.thresholds = [args.threshold] * len(loaded.labels)
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
        kept = f"the finished rows are kept: continue with --resume --out {args.out}" if args.out else \
            "nothing was written"
        print(f"\nInterrupted; {kept}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
