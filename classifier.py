"""The data command of the ViT image classifier, and the front door of its library.

    python classifier.py --generate-data            # a synthetic shapes data set in data/
    python classifier.py --check-data data          # audit a data set as train.py will read it
    python classifier.py --suggest-labels pool --model checkpoints/best --budget 50   # what to label next

As a module it exposes what train.py and predict.py are made of, for scripts and notebooks:
the folder data set and its preprocessing, the synthetic generator and the ViT wrapper:

    from classifier import ImageFolderDataset, load_splits, eval_transform, create_model, generate_data

The code behind them lives in the vitclassifier package (project.md draws its layers).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import vitclassifier
from vitclassifier.data.options import CheckDataConfig
from vitclassifier.data.synthetic import generate_data
from vitclassifier.errors import UserError, report_user_error
from vitclassifier.files import atomic_write_bytes, check_output_file
from vitclassifier.options import build_parser
from vitclassifier.text import printable
from vitclassifier.urls import redact


# The library this module hands to scripts and notebooks: the package's public names, imported on
# first use (PEP 562), so that --generate-data starts without loading torch and transformers.
def __getattr__(name: str):
    if name in vitclassifier.PUBLIC:
        return getattr(vitclassifier, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *vitclassifier.PUBLIC})  # the lazy names too, for tab completion


__all__ = list(vitclassifier.__all__)


def check_data(args: CheckDataConfig) -> int:
    """``--check-data DIR``: print (and optionally write as JSON) the audit; 1 if training is impossible."""
    from vitclassifier.data.audit import format_report
    from vitclassifier.data.sources import open_source
    from vitclassifier.deep_audit.outputs import format_findings
    root = args.check_data
    try:
        problems = args.problems()
        if problems:
            raise UserError("; ".join(problems))
        if args.json and args.json != "-":  # before the audit, which can take a while
            check_output_file(Path(args.json), "--json")
        if args.audit_out and not args.model:
            raise UserError("--audit-out is where the deep audit writes: add --model CKPT|PRESET|HUB-ID")
        # a folder with a single class is reported (exit 1), not refused (exit 2)
        source = open_source(root, args.data_format, args.val_split, args.split_seed, args.image_column,
                             args.label_column, min_classes=1, task=args.task,
                             separator=args.label_separator)
        deep = run_deep_audit(args, source) if args.model else None
        # Small images are judged against a size that is known: --image-size, or the --model's input.
        image_size = args.image_size or (deep and deep["image_size"])
        report = {
            "data": redact(str(root)),
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


def shards_command(args: CheckDataConfig) -> int:
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


def generate_command(args: CheckDataConfig) -> int:
    """``--generate-data``: the synthetic data set; 2 if an output is unusable or not ours to replace."""
    from vitclassifier.data.scenes import generate_scenes
    try:
        if args.multi_label:
            generate_scenes(args.out, args.classes, args.per_class * len(args.classes), args.image_size or 64,
                            args.seed)
            return 0
        generate_data(args.out, args.classes, args.per_class, args.image_size or 64, args.seed,
                      args.samples_dir)
    except UserError as error:
        return report_user_error(error)
    except OSError as error:  # the disk filled up or went away after the checks
        return report_user_error(UserError(f"{error.filename or args.out}: {error.strerror or error}"))
    return 0


def run_deep_audit(args: CheckDataConfig, source) -> dict:
    """``--check-data DIR --model M``: the deep audit (vitclassifier/deep_audit, docs/audit.md)."""
    from vitclassifier.deep_audit.run import deep_audit
    labels, train, val = source.labels, source.train(), source.val()  # read (and refused) first
    if source.streamed:
        raise UserError("--model: the deep audit reads images one by one, which streamed shards cannot do; "
                        "audit the folder the shards were made from")
    return deep_audit(args.check_data, labels, train, val, args)


def suggest_command(args: CheckDataConfig) -> int:
    """``--suggest-labels POOL --model M``: what to label next (docs/active-learning.md)."""
    from vitclassifier.active.suggest import format_suggestions, suggest
    try:
        problems = args.problems()
        if problems:
            raise UserError("; ".join(problems))
        summary = suggest(args)
    except UserError as error:
        return report_user_error(error)
    except OSError as error:
        where = error.filename or args.suggest_out
        return report_user_error(UserError(f"{where}: {error.strerror or error}"))
    print("\n".join(printable(line) for line in format_suggestions(summary)))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser("Data tools for the ViT image classifier.", CheckDataConfig)
    args = CheckDataConfig(**vars(parser.parse_args(argv)))
    if args.suggest_labels:
        return suggest_command(args)
    if args.to_shards or args.check_data:
        return shards_command(args) if args.to_shards else check_data(args)
    if not args.generate_data:
        parser.print_help()
        return 0
    return generate_command(args)


if __name__ == "__main__":
    sys.exit(main())
