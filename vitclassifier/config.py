"""Typed configuration of a training run: what train.py's options say, grouped, checked in one place.

The commands build these from argparse (``TrainConfig.from_options``); the library never sees a
Namespace. ``as_options`` gives the flat {option: value} view that a run saves with its training
state and that resume compares, option by option.
"""
from __future__ import annotations

import dataclasses
import math
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path

from vitclassifier.cli import DEVICES, PRECISION_HELP, PRECISIONS
from vitclassifier.errors import UserError
from vitclassifier.options import dest, field_problems, option, options_of, type_problems, values_of
from vitclassifier.urls import data_location

AUGMENTATIONS = ("crop", "flip", "rotate", "color_jitter")
SELECT_BY_CHOICES = ("auto", "accuracy", "macro-f1", "map", "loss")
DATA_FORMATS = ("auto", "folder", "labels", "hf", "shards")
TASKS = ("auto", "single-label", "multi-label")  # --task: one class per image, or several
RECIPES = ("auto", "fixed")  # --recipe: training/auto.py decides, or the defaults as they are
DEFAULT_LR = {True: 5e-5, False: 3e-4}
MIX_ALPHA = (0.01, 100.0)  # mixup/cutmix alphas outside this break the Beta draw or mean "off" anyway
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 16, 4096  # pretrained weights move gently; random ones need more
# Sentences several options share (each is said once however many of them are wrong)
NOT_NEGATIVE = "--patience, --num-workers, --freeze-epochs and --cache-mb must be >= 0"
A_FRACTION = "--dropout, --backbone-dropout and --label-smoothing: from 0 to below 1"
RECIPE, SELECTION = "fine-tuning recipe", "validation, imbalance and calibration"  # train.py's --help groups
PRESET_NAMES = ("vit-tiny", "vit-small", "vit-base", "vit-large")  # model/vit.PRESETS (a test checks)
# ``place`` orders train.py's --help, where the options of the four sections interleave.


@dataclass
class DataOptions:
    """Where the images are, how they are split, loaded and augmented."""
    folder: Path | str = option(
        "folder with one sub-folder per class (or train/ and val/ sub-folders); or a label file (.csv/.tsv/"
        ".jsonl), a Hugging Face dataset (save_to_disk folder, parquet, hf:ID) or tar shards ('train-"
        "{000000..000009}.tar', also on a store: s3://, gs://, az://, https://, pipe:): docs/data-formats.md",
        Path("data"), dest="data", place=1, type=data_location)
    val_split: float = option("fraction of each class held out for validation (ignored with train/ and val/)",
                              0.2, group=SELECTION, place=31, above=0, below=1,
                              problem="--val-split must be between 0 and 1")
    batch_size: int = option("images per training step and process (under torchrun the global batch is N "
                             "times this)", 32, place=7, at_least=1)
    num_workers: int | None = option(
        "DataLoader worker processes decoding images (default: 0 on CPUs with up to 4 cores, whose cores the "
        "model needs; 2 on bigger CPUs; up to 8 with a GPU)", None, place=41, at_least=0,
        problem=NOT_NEGATIVE, resume="session")
    cache_mb: int = option(
        "decode and resize each image once into an in-memory uint8 cache of at most this many MiB, so later "
        "epochs skip decoding (0: decode every epoch; tar shards stream, uncached)", 4096, place=42,
        at_least=0, problem=NOT_NEGATIVE, resume="session")
    balanced_sampler: bool = option("draw training images so every class is seen equally often (with "
                                    "replacement)", False, group=SELECTION, place=35)
    no_crop: bool = option("switch off the random crop augmentation", False, place=9)
    no_flip: bool = option("switch off the random flip augmentation", False, place=10)
    no_rotate: bool = option("switch off the random rotate augmentation", False, place=11)
    no_color_jitter: bool = option("switch off the random color-jitter augmentation", False, place=12)
    data_format: str = option("the form of --data (auto: told from the path)", "auto", choices=DATA_FORMATS,
                              place=2)
    image_column: str | None = option(
        "label files and Hugging Face datasets: the image column (default: recognised)", None, place=3)
    label_column: str | None = option(
        "label files and Hugging Face datasets: the label column (default: recognised)", None, place=4)
    task: str = option("single-label: one class per image; multi-label: several labels per image, from a "
                       "label file (docs/multi-label.md); auto: told from the data", "auto", choices=TASKS,
                       place=4.5)
    label_separator: str = option("label files: what separates several labels in one cell", ";", place=4.6)
    exclude: Path | None = option(
        "leave out the images FILE lists: one path per line, relative to --data, or a CSV file with a path "
        "column such as the deep audit's label_issues.csv (docs/audit.md); recorded in "
        "best/training_info.json", None, metavar="FILE", place=5)

    @property
    def augment(self) -> dict[str, bool]:
        """Which random augmentations are on, by name (BatchAugment's keywords)."""
        return {name: not getattr(self, f"no_{name}") for name in AUGMENTATIONS}


@dataclass
class ModelOptions:
    """Which network, from which weights, at which input size, with which parts trainable."""
    name: str = option(f"preset ({', '.join(PRESET_NAMES)}), Hugging Face Hub id, or local checkpoint "
                       f"directory", "vit-base", dest="model", place=13)
    no_pretrained: bool = option("build the preset's architecture with random weights (offline, no "
                                 "download)", False, place=14)
    image_size: int | None = option(
        "input size in pixels, a multiple of the patch size (default: the model's own)", None, place=15,
        at_least=MIN_IMAGE_SIZE, at_most=MAX_IMAGE_SIZE)
    dropout: float = option("dropout before the classification head", 0.1, group=RECIPE, place=25,
                            at_least=0, below=1, problem=A_FRACTION)
    backbone_dropout: float = option("dropout on the hidden states inside the transformer blocks", 0.0,
                                     group=RECIPE, place=26, at_least=0, below=1, problem=A_FRACTION)
    freeze: str = option("none: train all; backbone: train the head only; N: head + last N encoder blocks",
                         "none", group=RECIPE, place=20)
    grad_checkpointing: bool = option("recompute activations in the backward pass: much less memory, slower "
                                      "steps", False, place=16)

    @property
    def pretrained(self) -> bool:
        return not self.no_pretrained


@dataclass
class RecipeOptions:
    """How to fine-tune: schedule, optimizer, regularisation, model selection."""
    recipe: str = option(
        "auto: decide the learning rates, epochs, patience, head warm-up and flip from the data, the model "
        "and short measurements (an LR range test, a linear probe, a flip check), each decision printed "
        "and recorded, every option you type kept; fixed: the defaults as they are (docs/recipe.md)", "auto",
        choices=RECIPES, group=RECIPE, place=16.5)
    epochs: int = option("number of passes over the training set", 10, place=6, at_least=1)
    grad_accum: int = option("add up the gradients of N batches per optimizer step (effective batch: N x "
                             "--batch-size)", 1, place=8, at_least=1)
    lr: float | None = option("peak learning rate (default: 5e-5 for pretrained weights, 3e-4 with "
                              "--no-pretrained)", None, group=RECIPE, place=17, above=0,
                              problem="--lr must be positive")  # None: DEFAULT_LR (from_options)
    head_lr: float | None = option("peak learning rate of the new classification head (default: 10 x --lr "
                                   "when pretrained, else --lr)", None, group=RECIPE, place=18, above=0,
                                   problem="--head-lr must be positive")
    layer_decay: float = option(
        "LR factor per encoder block from the top, so early blocks move less (1: off; 0.65-0.75 suits strong "
        "ImageNet backbones on long runs)", 1.0, group=RECIPE, place=19, above=0, at_most=1,
        problem="--layer-decay must be in (0, 1]")
    freeze_epochs: int = option("train the head alone for this many epochs first, then unfreeze (per "
                                "--freeze) with a new warm-up", 0, group=RECIPE, place=21, at_least=0,
                                problem=NOT_NEGATIVE)
    weight_decay: float = option("AdamW weight decay (not on biases/norms)", 0.05, group=RECIPE, place=22,
                                 at_least=0, problem="--weight-decay must not be negative")
    warmup: float = option("fraction of each stage's steps spent warming up", 0.1, group=RECIPE, place=23,
                           at_least=0, below=1,
                           problem="--warmup is a fraction of the steps, from 0 to below 1")
    grad_clip: float = option("clip the gradient norm to this (0: off)", 1.0, group=RECIPE, place=24,
                              at_least=0, problem="--grad-clip must not be negative")
    label_smoothing: float = option("label smoothing of the training loss", 0.1, group=RECIPE, place=27,
                                    at_least=0, below=1, problem=A_FRACTION)
    mixup: float = option("mixup alpha (0: off; 0.2-0.8 typical)", 0.0, group=RECIPE, place=28)
    cutmix: float = option("cutmix alpha (0: off; 1.0 typical)", 0.0, group=RECIPE, place=29)
    ema: float = option("keep an exponential moving average of the weights with this decay (e.g. 0.999; 0: "
                        "off); it is validated too and saved when better", 0.0, group=RECIPE, place=30,
                        at_least=0, below=1, problem="--ema is a decay from 0 (off) to below 1, e.g. 0.999")
    patience: int = option("stop after this many epochs without a better validation score (0: never)", 5,
                           group=SELECTION, place=32, at_least=0, problem=NOT_NEGATIVE, resume="free")
    select_by: str = option("validation score that picks the best model (macro-f1 suits imbalanced classes; "
                            "map: several labels per image; auto: map for several labels per image, else "
                            "accuracy)", "auto", choices=SELECT_BY_CHOICES, group=SELECTION, place=33)
    loss: str = option("several labels per image: binary cross-entropy (bce) or the asymmetric loss (asl, "
                       "for sets with many negatives); one class per image trains with cross-entropy", "bce",
                       choices=("bce", "asl"), group=SELECTION, place=33.5)
    class_weights: str = option("auto: weight the loss by inverse class frequency (for imbalanced classes)",
                                "none", choices=["none", "auto"], group=SELECTION, place=34,
                                problem="--class-weights: choose none or auto")
    folds: int = option("first cross-validate on all labelled images (training and validation splits) in "
                        "K stratified folds, a linear probe on the pre-trained features per fold (seconds): "
                        "the mean and interval of accuracy, macro-F1 and per-class recall, printed and "
                        "recorded; then the model trains as usual (0: off)", 0, group=SELECTION, place=35.5,
                        at_least=0, problem="--folds must be 0 (off) or a number of folds from 2 up",
                        metavar="K")
    calibrate: bool = option("don't fit a softmax temperature on the validation set after training", True,
                             flags=("--no-calibrate",), group=SELECTION, place=36)
    seed: int = option("seed for the split, augmentation and initialisation", 42, place=38)


@dataclass
class RuntimeOptions:
    """Where and how the run executes and what it writes; none of it changes the result."""
    device: str = option("where to train; auto picks a GPU when there is one", "auto", choices=DEVICES,
                         place=39, resume="session")
    precision: str = option(PRECISION_HELP, "auto", choices=PRECISIONS, place=40, resume="free")
    compile: bool = option("torch.compile the model first (about a minute on a CPU): for long runs on GPUs "
                           "(docs/performance.md)", False, place=43, resume="session")
    output_dir: Path = option("where checkpoints and pictures go (--evaluate: default CHECKPOINT-evaluation)",
                              Path("checkpoints"), place=44, resume="session")
    overwrite: bool = option("replace the run already in --output-dir (only this tool's files there are "
                             "removed; without it such a folder is refused)", False, place=45,
                             resume="session")
    track: str | None = option("log parameters, metrics, pictures and the best model to MLflow, or metrics "
                               "to TensorBoard", None, choices=["mlflow", "tensorboard"], place=46,
                               resume="session")
    tracking_uri: str | None = option("MLflow tracking server or store (default: a local store in "
                                      "--output-dir)", None, place=47, resume="session")
    resume: str | None = option(
        "continue an interrupted run from DIR/last (default DIR: --output-dir); auto: resume if --output-dir "
        "holds an interrupted run, else start afresh", None, nargs="?", const="", metavar="DIR|auto",
        place=48, resume="session")  # None: start afresh; "": DIR is --output-dir; "auto"; or DIR


@dataclass
class TrainCommand:
    """What train.py does besides training: only score a checkpoint, or only find the LR. Not part of a
    run's options."""
    lr_find: bool = option("only run the LR range test on the training split: print the suggested peak and "
                           "head LR and save the loss-vs-LR picture lr_find.png (in --output-dir if given, "
                           "else here)", False, group=RECIPE, place=16.6)
    evaluate: bool = option("only score the checkpoint --model (or an export of it: .onnx, .xml, .pt) on the "
                            "labelled folder --data (metrics and pictures)", False, group=SELECTION, place=37)


SECTIONS = {"data": DataOptions, "model": ModelOptions, "recipe": RecipeOptions, "runtime": RuntimeOptions}


@dataclass
class TrainConfig:
    data: DataOptions = field(default_factory=DataOptions)
    model: ModelOptions = field(default_factory=ModelOptions)
    recipe: RecipeOptions = field(default_factory=RecipeOptions)
    runtime: RuntimeOptions = field(default_factory=RuntimeOptions)

    @classmethod
    def from_options(cls, options: dict) -> TrainConfig:
        """Build from {option dest: value} (argparse's namespace, or a saved run's options); options
        this version doesn't know are ignored, missing ones take their defaults. Validated."""
        sections = {}
        for section, kind in SECTIONS.items():
            values = {}
            for f, annotation in options_of(kind):
                if dest(f) in options:
                    value = options[dest(f)]  # saved options hold paths as text (--data's URLs stay text)
                    paths = Path in (annotation, *typing.get_args(annotation))
                    as_path = f.metadata.get("type", Path)
                    values[f.name] = as_path(value) if paths and isinstance(value, str) else value
            sections[section] = kind(**values)
        config = cls(**sections)
        config.validate()
        return config.with_default_lrs()

    def as_options(self) -> dict:
        """Every option by its dest, as plain data (paths as text): saved with the training state,
        logged to trackers, compared on resume."""
        return {dest(f): str(value) if isinstance(value, Path) else value for f, _, value in values_of(self)}

    def replace(self, **options) -> TrainConfig:
        """A copy with some options (by dest) changed, validated again."""
        return TrainConfig.from_options({**self.as_options(), **options})

    def with_default_lrs(self) -> TrainConfig:
        recipe, pretrained = self.recipe, self.model.pretrained
        lr = recipe.lr or DEFAULT_LR[pretrained]
        head_lr = recipe.head_lr or (10 * lr if pretrained else lr)
        return dataclasses.replace(self, recipe=dataclasses.replace(recipe, lr=lr, head_lr=head_lr))

    def problems(self) -> list[str]:
        """What is wrong with these options, one sentence each naming the option: the types, then the
        bounds and choices the fields declare, then what involves several options or this machine."""
        wrong_types = type_problems(self)
        if wrong_types:  # the checks below compare numbers: only once every value has its type
            return wrong_types
        if not all(math.isfinite(value) for _, _, value in values_of(self) if isinstance(value, float)):
            return ["numeric options must be finite numbers, not nan or inf"]
        d, m, r = self.data, self.model, self.recipe
        checks = [
            (all(a == 0 or MIX_ALPHA[0] <= a <= MIX_ALPHA[1] for a in (r.mixup, r.cutmix)),
             f"--mixup and --cutmix: 0 (off) or an alpha from {MIX_ALPHA[0]:g} to {MIX_ALPHA[1]:g}"),
            (all(c is None or c.strip() for c in (d.image_column, d.label_column)),
             "--image-column and --label-column must name a column, not be empty"),
            ((d.num_workers or 0) <= max_workers(),
             f"--num-workers: at most {max_workers()} on this machine"),
            (m.freeze in ("none", "backbone") or str(m.freeze).isdigit(),
             f"--freeze {m.freeze!r}: use none, backbone or a number of encoder blocks"),
        ]
        return field_problems(self) + [message for ok, message in checks if not ok]

    def validate(self) -> None:
        problems = self.problems()
        if problems:
            raise UserError("; ".join(problems))


def max_workers() -> int:
    """More DataLoader workers than this only cost memory: they would wait for the cores."""
    return max(8, 4 * (os.cpu_count() or 1))
