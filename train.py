"""Fine-tune a Vision Transformer on a folder of images (one sub-folder per class).

    python train.py --epochs 5 --batch-size 16
    torchrun --nproc_per_node=2 train.py --epochs 5 --batch-size 16     # one process per device
    python train.py --evaluate --model checkpoints/best --data other_photos   # or an export of it
    python train.py --lr-find                   # the LR range test alone: a suggestion and lr_find.png

Each epoch trains with AdamW (warm-up, then cosine decay; layer-wise LR decay; optionally the
head alone first), validates, and keeps the best model by the --select-by score. Outputs in
--output-dir: best/ and last/ (Hugging Face save_pretrained directories), metrics.csv, curves,
confusion matrix, per-class scores and the most confident mistakes.
Ctrl-C (or SIGTERM) finishes the current step, saves last/ and says how to resume.

This file only reads the command line; the run is vitclassifier.training.trainer.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vitclassifier.cli import typed_options
from vitclassifier.config import TrainCommand, TrainConfig
from vitclassifier.devices import keep_freed_memory
from vitclassifier.errors import UserError, report_user_error
from vitclassifier.evaluation import evaluate_checkpoint
from vitclassifier.options import build_parser as build_options_parser
from vitclassifier.text import shell_word
from vitclassifier.training.auto import find_lr
from vitclassifier.training.trainer import train

TRAINED_MODEL = Path("checkpoints") / "best"  # where a run with the default --output-dir keeps its model
LR_PICTURE = "lr_find.png"  # --lr-find's loss-vs-LR curve: in --output-dir if given, else here


def build_parser() -> argparse.ArgumentParser:
    """Every option of TrainConfig's sections, --lr-find and --evaluate (vitclassifier/config.py declares
    them)."""
    description = "Fine-tune a pre-trained ViT on a folder of images."
    return build_options_parser(description, TrainConfig, TrainCommand)


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, TrainConfig, set[str]]:
    """The parsed command line, the run's configuration (checked), and the options typed explicitly
    (a resumed run takes the others from its save)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = TrainConfig.from_options(vars(args))
    except UserError as error:
        parser.error(str(error))
    return args, config, typed_options(parser, argv, args)


def model_to_evaluate(config: TrainConfig, given: set[str]) -> TrainConfig:
    """--evaluate scores --model; without it, the model a plain training run leaves (checkpoints/best),
    not the preset --model defaults to, which is no trained checkpoint."""
    if "model" in given:
        return config
    if not (TRAINED_MODEL / "config.json").is_file():
        raise UserError(f"--evaluate needs --model: a trained checkpoint folder or an export of one "
                        f"(there is no {TRAINED_MODEL} here to score)")
    print(f"Scoring {TRAINED_MODEL} (give --model to score another checkpoint)")
    return config.replace(model=str(TRAINED_MODEL))


def main(argv: list[str] | None = None) -> int:
    args, config, given = parse_args(argv)
    keep_freed_memory()
    try:
        if args.lr_find:
            find_lr(config, given, (args.output_dir if "output_dir" in given else Path()) / LR_PICTURE)
            return 0
        if args.evaluate:
            pictures = args.output_dir if "output_dir" in given else None
            evaluate_checkpoint(model_to_evaluate(config, given), pictures)
            return 0
        summary = train(config, given)
    except UserError as error:
        return report_user_error(error)
    except KeyboardInterrupt:
        print(
            f"\nStopped at once. The last completed save can be continued with: "
            f"python train.py --resume {shell_word(args.output_dir)}",
            file=sys.stderr,
        )
        return 130
    return 128 + summary["stopped_by"] if summary["stopped_by"] else 0


if __name__ == "__main__":
    sys.exit(main())
