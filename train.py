"""Fine-tune a Vision Transformer on a folder of images (one sub-folder per class).

    python train.py --epochs 5 --batch-size 16
    torchrun --nproc_per_node=2 train.py --epochs 5 --batch-size 16     # one process per device
    python train.py --evaluate --model checkpoints/best --data other_photos   # or an export of it

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

from vitclassifier.cli import add_device_option, add_precision_option, new_parser, typed_options
from vitclassifier.config import DATA_FORMATS, SELECT_BY_CHOICES, TrainConfig
from vitclassifier.devices import keep_freed_memory
from vitclassifier.errors import UserError, report_user_error
from vitclassifier.evaluation import evaluate_checkpoint
from vitclassifier.model.vit import PRESETS
from vitclassifier.text import shell_word
from vitclassifier.training.trainer import train

TRAINED_MODEL = Path("checkpoints") / "best"  # where a run with the default --output-dir keeps its model


def add_data_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", type=Path, default=Path("data"),
                   help="folder with one sub-folder per class (or train/ and val/ sub-folders); or a label "
                        "file (.csv/.tsv/.jsonl), a Hugging Face dataset (save_to_disk folder, parquet, "
                        "hf:ID) or tar shards ('train-{000000..000009}.tar'): docs/data-formats.md")
    p.add_argument("--data-format", default="auto", choices=DATA_FORMATS,
                   help="the form of --data (auto: told from the path)")
    p.add_argument("--image-column", default=None,
                   help="label files and Hugging Face datasets: the image column (default: recognised)")
    p.add_argument("--label-column", default=None,
                   help="label files and Hugging Face datasets: the label column (default: recognised)")
    p.add_argument("--exclude", type=Path, default=None, metavar="FILE",
                   help="leave out the images FILE lists: one path per line, relative to --data, or a CSV "
                        "file with a path column such as the deep audit's label_issues.csv (docs/audit.md); "
                        "recorded in best/training_info.json")
    p.add_argument("--epochs", type=int, default=10, help="number of passes over the training set")
    p.add_argument("--batch-size", type=int, default=32,
                   help="images per training step and process (under torchrun the global batch is N times "
                        "this)")
    p.add_argument("--grad-accum", type=int, default=1,
                   help="add up the gradients of N batches per optimizer step (effective batch: N x "
                        "--batch-size)")
    for name in ("crop", "flip", "rotate", "color-jitter"):
        p.add_argument(f"--no-{name}", action="store_true", help=f"switch off the random {name} augmentation")


def add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="vit-base",
                   help=f"preset ({', '.join(PRESETS)}), Hugging Face Hub id, or local checkpoint directory")
    p.add_argument("--no-pretrained", action="store_true",
                   help="build the preset's architecture with random weights (offline, no download)")
    p.add_argument("--image-size", type=int, default=None,
                   help="input size in pixels, a multiple of the patch size (default: the model's own)")
    p.add_argument("--grad-checkpointing", action="store_true",
                   help="recompute activations in the backward pass: much less memory, slower steps")


def add_recipe_options(p: argparse.ArgumentParser) -> None:
    recipe = p.add_argument_group("fine-tuning recipe")
    recipe.add_argument("--lr", type=float, default=None,
                        help="peak learning rate (default: 5e-5 for pretrained weights, 3e-4 with "
                             "--no-pretrained)")
    recipe.add_argument("--head-lr", type=float, default=None,
                        help="peak learning rate of the new classification head (default: 10 x --lr when "
                             "pretrained, else --lr)")
    recipe.add_argument("--layer-decay", type=float, default=1.0,
                        help="LR factor per encoder block from the top, so early blocks move less (1: off; "
                             "0.65-0.75 suits strong ImageNet backbones on long runs)")
    recipe.add_argument("--freeze", default="none",
                        help="none: train all; backbone: train the head only; N: head + last N encoder "
                             "blocks")
    recipe.add_argument("--freeze-epochs", type=int, default=0,
                        help="train the head alone for this many epochs first, then unfreeze (per --freeze) "
                             "with a new warm-up")
    recipe.add_argument("--weight-decay", type=float, default=0.05,
                        help="AdamW weight decay (not on biases/norms)")
    recipe.add_argument("--warmup", type=float, default=0.1,
                        help="fraction of each stage's steps spent warming up")
    recipe.add_argument("--grad-clip", type=float, default=1.0,
                        help="clip the gradient norm to this (0: off)")
    recipe.add_argument("--dropout", type=float, default=0.1, help="dropout before the classification head")
    recipe.add_argument("--backbone-dropout", type=float, default=0.0,
                        help="dropout on the hidden states inside the transformer blocks")
    recipe.add_argument("--label-smoothing", type=float, default=0.1,
                        help="label smoothing of the training loss")
    recipe.add_argument("--mixup", type=float, default=0.0, help="mixup alpha (0: off; 0.2-0.8 typical)")
    recipe.add_argument("--cutmix", type=float, default=0.0, help="cutmix alpha (0: off; 1.0 typical)")
    recipe.add_argument("--ema", type=float, default=0.0,
                        help="keep an exponential moving average of the weights with this decay (e.g. 0.999; "
                             "0: off); it is validated too and saved when better")


def add_selection_options(p: argparse.ArgumentParser) -> None:
    select = p.add_argument_group("validation, imbalance and calibration")
    select.add_argument("--val-split", type=float, default=0.2,
                        help="fraction of each class held out for validation (ignored with train/ and val/)")
    select.add_argument("--patience", type=int, default=5,
                        help="stop after this many epochs without a better validation score (0: never)")
    select.add_argument("--select-by", default="accuracy", choices=SELECT_BY_CHOICES,
                        help="validation score that picks the best model (macro-f1 suits imbalanced classes)")
    select.add_argument("--class-weights", default="none", choices=["none", "auto"],
                        help="auto: weight the loss by inverse class frequency (for imbalanced classes)")
    select.add_argument("--balanced-sampler", action="store_true",
                        help="draw training images so every class is seen equally often (with replacement)")
    select.add_argument("--no-calibrate", dest="calibrate", action="store_false",
                        help="don't fit a softmax temperature on the validation set after training")
    select.add_argument("--evaluate", action="store_true",
                        help="only score the checkpoint --model (or an export of it: .onnx, .xml, .pt) on "
                             "the labelled folder --data (metrics and pictures)")


def add_runtime_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seed", type=int, default=42, help="seed for the split, augmentation and initialisation")
    add_device_option(p, "where to train; auto picks a GPU when there is one")
    add_precision_option(p)
    p.add_argument("--num-workers", type=int, default=None,
                   help="DataLoader worker processes decoding images (default: 0 on CPUs with up to 4 cores, "
                        "whose cores the model needs; 2 on bigger CPUs; up to 8 with a GPU)")
    p.add_argument("--cache-mb", type=int, default=4096,
                   help="decode and resize each image once into an in-memory uint8 cache of at most this "
                        "many MiB, so later epochs skip decoding (0: decode every epoch; tar shards stream, "
                        "uncached)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the model first (about a minute on a CPU): for long runs on GPUs "
                        "(docs/performance.md)")
    p.add_argument("--output-dir", type=Path, default=Path("checkpoints"),
                   help="where checkpoints and pictures go (--evaluate: default CHECKPOINT-evaluation)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run already in --output-dir (only this tool's files there are removed; "
                        "without it such a folder is refused)")
    p.add_argument("--track", choices=["mlflow", "tensorboard"], default=None,
                   help="log parameters, metrics, pictures and the best model to MLflow, or metrics to "
                        "TensorBoard")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking server or store (default: a local store in --output-dir)")
    p.add_argument("--resume", nargs="?", const="", default=None, metavar="DIR|auto",
                   help="continue an interrupted run from DIR/last (default DIR: --output-dir); auto: resume "
                        "if --output-dir holds an interrupted run, else start afresh")


def build_parser() -> argparse.ArgumentParser:
    p = new_parser("Fine-tune a pre-trained ViT on a folder of images.")
    for add_options in (add_data_options, add_model_options, add_recipe_options, add_selection_options,
                        add_runtime_options):
        add_options(p)
    return p


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
