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
import importlib
import json
import sys
from pathlib import Path

from vitclassifier.cli import add_device_option, new_parser
from vitclassifier.config import DATA_FORMATS
from vitclassifier.data.synthetic import DEFAULT_CLASSES, SHAPES, at_least, generate_data, parse_classes
from vitclassifier.errors import UserError, printable, report_user_error
from vitclassifier.files import atomic_write_bytes, check_output_file

# The library this module hands to scripts and notebooks, imported on first use (PEP 562), so that
# --generate-data starts without loading torch and transformers (seconds on a small machine).
LIBRARY = {
    "PRESETS": "vitclassifier.model.vit", "create_model": "vitclassifier.model.vit",
    "freeze": "vitclassifier.model.vit",
    "ImageFolderDataset": "vitclassifier.data.dataset", "collate_skipping_bad": "vitclassifier.data.dataset",
    "fill_caches": "vitclassifier.data.dataset",
    "Preprocessing": "vitclassifier.data.transforms", "eval_transform": "vitclassifier.data.transforms",
    "list_images": "vitclassifier.data.folders", "load_splits": "vitclassifier.data.folders",
    "scan_class_folders": "vitclassifier.data.folders",
    "train_decode": "vitclassifier.data.augment", "BatchAugment": "vitclassifier.data.augment",
}


def __getattr__(name: str):
    if name in LIBRARY:
        return getattr(importlib.import_module(LIBRARY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *LIBRARY])  # the lazy names too, for tab completion


__all__ = ["UserError", "generate_data", *LIBRARY]


def check_data(args: argparse.Namespace) -> int:
    """``--check-data DIR``: print (and optionally write as JSON) the audit; 1 if training is impossible."""
    from vitclassifier.data.audit import format_report
    from vitclassifier.data.sources import open_source
    from vitclassifier.deep_audit.outputs import format_findings
    root = args.check_data
    try:
        if not 0 < args.val_split < 1:
            raise UserError(f"--val-split must be between 0 and 1, got {args.val_split}")
        if args.json and args.json != "-":  # before the audit, which can take a while
            check_output_file(Path(args.json), "--json")
        if args.audit_out and not args.model:
            raise UserError("--audit-out is where the deep audit writes: add --model CKPT|PRESET|HUB-ID")
        # a folder with a single class is reported (exit 1), not refused (exit 2)
        source = open_source(root, args.data_format, args.val_split, args.split_seed, args.image_column,
                             args.label_column, min_classes=1)
        deep = run_deep_audit(args, source) if args.model else None
        # Small images are judged against a size that is known: --image-size, or the --model's input.
        image_size = args.image_size or (deep and deep["image_size"])
        report = {
            "data": str(root),
            "split": source.split_origin(),
            **source.full_audit(image_size),
            **({"deep": deep} if deep else {}),
        }
        as_json = (json.dumps(report, indent=2) + "\n").encode()
        if deep:
            atomic_write_bytes(Path(deep["folder"]) / "report.json", as_json)
        if args.json and args.json != "-":
            atomic_write_bytes(Path(args.json), as_json)
    except UserError as error:
        return report_user_error(error)
    except OSError as error:
        return report_user_error(UserError(f"{error.filename or args.json}: {error.strerror or error}"))
    # With the JSON on stdout, the text goes to stderr so that stdout stays parseable.
    text = format_report(report) + ("\n" + "\n".join(printable(line) for line in format_findings(deep))
                                    if deep else "")
    print(text, file=sys.stderr if args.json == "-" else sys.stdout)
    if args.json == "-":
        print(json.dumps(report, indent=2))
    return 1 if report["fatal"] else 0


def shards_command(args: argparse.Namespace) -> int:
    """``--to-shards DIR OUT``: the folder DIR as tar shards in OUT; 2 if DIR or OUT is unusable."""
    from vitclassifier.data.shardwriter import to_shards
    source, out = args.to_shards
    try:
        index = to_shards(source, out, args.val_split, args.split_seed, args.shard_size)
    except UserError as error:
        return report_user_error(error)
    except OSError as error:
        return report_user_error(UserError(f"{error.filename or out}: {error.strerror or error}"))
    last = len(index["train"]) - 1
    print(f"Wrote {len(index['train'])} training and {len(index['val'])} validation shard(s) into {out}. "
          f"Train with: python train.py --data '{out}/train-{{000000..{last:06d}}}.tar'")
    return 0


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


def run_deep_audit(args: argparse.Namespace, source) -> dict:
    """``--check-data DIR --model M``: the deep audit (vitclassifier/deep_audit, docs/audit.md)."""
    from vitclassifier.deep_audit.run import AuditOptions, deep_audit
    labels, train, val = source.labels, source.train(), source.val()  # read (and refused) first
    if source.streamed:
        raise UserError("--model: the deep audit reads images one by one, which streamed shards cannot do; "
                        "audit the folder the shards were made from")
    options = AuditOptions(model=args.model, out=args.audit_out, folds=args.folds,
                           duplicate_threshold=args.duplicate_threshold, pixel_threshold=args.pixel_threshold,
                           batch_size=args.batch_size, device=args.device)
    return deep_audit(args.check_data, labels, train, val, options)


def add_check_options(parser: argparse.ArgumentParser) -> None:
    """The options of --check-data, then those of its deep audit (--model)."""
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
    add_audit_options(parser)


def add_audit_options(parser: argparse.ArgumentParser) -> None:
    """--model and the options of the deep audit (docs/audit.md)."""
    deep = parser.add_argument_group("--check-data --model options: the deep audit (docs/audit.md)")
    deep.add_argument("--model", metavar="CKPT|PRESET|HUB-ID",
                      help="embed every image with this model (a trained checkpoint such as "
                      "checkpoints/best, a preset or a Hugging Face id) and report near-duplicates, "
                      "suspected label errors and outliers: suspects to review, not verdicts")
    deep.add_argument("--audit-out", type=Path, metavar="DIR",
                      help="where the CSV files, pictures, report.json and the embedding cache go "
                      "(default: DIR-audit beside the data)")
    deep.add_argument("--folds", type=at_least(2), default=5,
                      help="folds of the out-of-fold linear classifier behind the suspected label errors")
    deep.add_argument("--duplicate-threshold", type=float, default=0.995,
                      help="near-duplicates: cosine similarity of the embeddings from which two images "
                      "count")
    deep.add_argument("--pixel-threshold", type=float, default=0.99,
                      help="near-duplicates: cosine similarity of 8x8 colour thumbnails from which two "
                      "images count (resized, recompressed or slightly cut copies)")
    deep.add_argument("--batch-size", type=at_least(1), default=64, help="images embedded at once")
    add_device_option(deep)


def add_source_options(parser: argparse.ArgumentParser, command) -> None:
    """--to-shards, and the options that read --check-data in any form (docs/data-formats.md)."""
    command.add_argument(
        "--to-shards", nargs=2, type=Path, metavar=("DIR", "OUT"),
        help="write the class folder DIR as WebDataset tar shards into the new folder OUT (train-*.tar, "
        "val-*.tar, index.json), split by --val-split and --split-seed as train.py splits it",
    )
    forms = parser.add_argument_group("data forms (--check-data) and --to-shards options")
    forms.add_argument("--data-format", default="auto", choices=DATA_FORMATS,
                       help="the form of the data (auto: told from the path; see docs/data-formats.md)")
    forms.add_argument("--image-column", default=None, help="label files, HF datasets: the image column")
    forms.add_argument("--label-column", default=None, help="label files, HF datasets: the label column")
    forms.add_argument("--shard-size", type=at_least(1), default=1000, help="--to-shards: images per shard")


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
        "and duplicate files, class imbalance; with --model also near-duplicates, suspected label "
        "errors and outliers. Exit code 1 if training is impossible",
    )
    add_source_options(parser, command)
    parser.add_argument(
        "--image-size",
        type=at_least(16),
        default=None,
        metavar="N",
        help="--generate-data: side of each image in pixels (default: 64); --check-data: "
        "images with a shorter side are reported (default: the --model's input size; without "
        "--model, sizes are not judged)",
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
    generate.add_argument("--samples-dir", type=Path, default=Path("."), help="where sample.jpg, samples/ go")
    add_check_options(parser)
    args = parser.parse_args(argv)
    if args.to_shards or args.check_data:
        return shards_command(args) if args.to_shards else check_data(args)
    if not args.generate_data:
        parser.print_help()
        return 0
    return generate_command(args)


if __name__ == "__main__":
    sys.exit(main())
