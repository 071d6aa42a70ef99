"""The data command of the ViT image classifier, and the front door of its library.

    python classifier.py --generate-data            # a synthetic shapes data set in data/
    python classifier.py --check-data data          # audit a data set as train.py will read it

As a module it exposes what train.py and predict.py are made of, for scripts and notebooks:
the folder data set and its preprocessing, the synthetic generator and the ViT wrapper:

    from classifier import ImageFolderDataset, load_splits, eval_transform, create_model, generate_data

The code behind them lives in the vitclassifier package (project.md draws its layers).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from vitclassifier.cli import new_parser
from vitclassifier.data.audit import audit_dataset, format_report
from vitclassifier.data.augment import BatchAugment, train_decode
from vitclassifier.data.dataset import ImageFolderDataset, collate_skipping_bad, fill_caches
from vitclassifier.data.folders import list_images, load_splits, scan_class_folders
from vitclassifier.data.synthetic import DEFAULT_CLASSES, SHAPES, at_least, generate_data, parse_classes
from vitclassifier.data.transforms import Preprocessing, eval_transform
from vitclassifier.errors import UserError, report_user_error
from vitclassifier.files import atomic_write_bytes, check_output_file
from vitclassifier.model.vit import PRESETS, create_model, freeze

__all__ = [
    "PRESETS",
    "ImageFolderDataset",
    "Preprocessing",
    "UserError",
    "collate_skipping_bad",
    "create_model",
    "eval_transform",
    "fill_caches",
    "freeze",
    "generate_data",
    "list_images",
    "load_splits",
    "scan_class_folders",
    "train_decode", "BatchAugment",
]


def check_data(args: argparse.Namespace) -> int:
    """``--check-data DIR``: print (and optionally write as JSON) the audit; 1 if training is impossible."""
    root = args.check_data
    try:
        if not 0 < args.val_split < 1:
            raise UserError(f"--val-split must be between 0 and 1, got {args.val_split}")
        if args.json and args.json != "-":  # before the audit, which can take a while
            check_output_file(Path(args.json), "--json")
        labels, train, val = load_splits(root, args.val_split, args.split_seed)
        # load_splits took the split from root/train and root/val exactly when all training files lie there
        split = (
            "the train/ and val/ folders"
            if all(p.is_relative_to(root / "train") for p, _ in train)
            else f"{args.val_split * 100:g}% of each class held out, seed {args.split_seed}"
        )
        report = {
            "data": str(root),
            "split": split,
            **audit_dataset(labels, train, val, args.image_size or 224),
        }
        if args.json and args.json != "-":
            atomic_write_bytes(Path(args.json), (json.dumps(report, indent=2) + "\n").encode())
    except UserError as error:
        return report_user_error(error)
    except OSError as error:
        return report_user_error(UserError(f"{error.filename or args.json}: {error.strerror or error}"))
    # With the JSON on stdout, the text goes to stderr so that stdout stays parseable.
    print(format_report(report), file=sys.stderr if args.json == "-" else sys.stdout)
    if args.json == "-":
        print(json.dumps(report, indent=2))
    return 1 if report["fatal"] else 0


def generate_command(args: argparse.Namespace) -> int:
    """``--generate-data``: the synthetic data set; 2 if an output is unusable or not ours to replace."""
    try:
        generate_data(args.out, args.classes, args.per_class, args.image_size or 64, args.seed,
                      args.samples_dir)
    except UserError as error:
        return report_user_error(error)
    except OSError as error:  # the disk filled up or went away after the checks
        return report_user_error(UserError(f"{error.filename or args.out}: {error.strerror or error}"))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = new_parser("Data tools for the ViT image classifier.")
    command = parser.add_mutually_exclusive_group()
    command.add_argument(
        "--generate-data",
        action="store_true",
        help="write a synthetic shapes data set (one sub-folder per class) and sample images; files it "
        "did not write itself are never replaced",
    )
    command.add_argument(
        "--check-data",
        type=Path,
        metavar="DIR",
        help="audit a data set as train.py will read it: class counts, unreadable, small "
        "and duplicate files, class imbalance. Exit code 1 if training is impossible",
    )
    parser.add_argument(
        "--image-size",
        type=at_least(16),
        default=None,
        metavar="N",
        help="--generate-data: side of each image in pixels (default: 64); --check-data: "
        "the model input size, smaller images are reported (default: 224)",
    )
    generate = parser.add_argument_group("--generate-data options")
    generate.add_argument("--out", type=Path, default=Path("data"), help="where to write the data set")
    generate.add_argument(
        "--classes",
        type=parse_classes,
        default=DEFAULT_CLASSES,
        help=f"comma-separated shapes, or a count; available: {', '.join(SHAPES)}",
    )
    generate.add_argument("--per-class", type=at_least(2), default=1200, help="images per class")
    generate.add_argument("--seed", type=int, default=0, help="random seed; same seed, same files")
    generate.add_argument(
        "--samples-dir", type=Path, default=Path("."), help="where sample.jpg and samples/ go"
    )
    check = parser.add_argument_group("--check-data options")
    check.add_argument(
        "--val-split",
        type=float,
        default=0.2,
        help="fraction of each class held out for validation; must match train.py's "
        "--val-split (ignored with train/ and val/ folders)",
    )
    check.add_argument(
        "--split-seed",
        type=int,
        default=42,
        help="seed of the train/validation split; must match train.py's --seed",
    )
    check.add_argument("--json", metavar="FILE", help="also write the report as JSON ('-' for stdout)")
    args = parser.parse_args(argv)
    if args.check_data:
        return check_data(args)
    if not args.generate_data:
        parser.print_help()
        return 0
    return generate_command(args)


if __name__ == "__main__":
    sys.exit(main())
