"""Typed configuration of a training run: what train.py's options say, grouped, checked in one place.

The commands build these from argparse (``TrainConfig.from_options``); the library never sees a
Namespace. ``as_options`` gives the flat {option: value} view that a run saves with its training
state and that resume compares, option by option.
"""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from vitclassifier.cli import DEVICES, PRECISIONS
from vitclassifier.errors import UserError

AUGMENTATIONS = ("crop", "flip", "rotate", "color_jitter")
SELECT_BY_CHOICES = ("accuracy", "macro-f1", "loss")
DATA_FORMATS = ("auto", "folder", "labels", "hf", "shards")
DEFAULT_LR = {True: 5e-5, False: 3e-4}
MIX_ALPHA = (0.01, 100.0)  # mixup/cutmix alphas outside this break the Beta draw or mean "off" anyway
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 16, 4096  # pretrained weights move gently; random ones need more


@dataclass
class DataOptions:
    """Where the images are, how they are split, loaded and augmented."""
    folder: Path = field(default=Path("data"), metadata={"option": "data"})
    val_split: float = 0.2
    batch_size: int = 32
    num_workers: int | None = None  # None: by device (devices.loader_workers)
    cache_mb: int = 4096
    balanced_sampler: bool = False
    no_crop: bool = False
    no_flip: bool = False
    no_rotate: bool = False
    no_color_jitter: bool = False
    data_format: str = "auto"  # auto | folder | labels | hf | shards (data/sources.py)
    image_column: str | None = None  # label files and Hugging Face datasets: None: recognised by name
    label_column: str | None = None
    exclude: Path | None = None  # a list of images to leave out (data/exclude.py)

    @property
    def augment(self) -> dict[str, bool]:
        """Which random augmentations are on, by name (BatchAugment's keywords)."""
        return {name: not getattr(self, f"no_{name}") for name in AUGMENTATIONS}


@dataclass
class ModelOptions:
    """Which network, from which weights, at which input size, with which parts trainable."""
    name: str = field(default="vit-base", metadata={"option": "model"})
    no_pretrained: bool = False
    image_size: int | None = None  # None: the model's own
    dropout: float = 0.1
    backbone_dropout: float = 0.0
    freeze: str = "none"  # none | backbone | N (the last N encoder blocks train)
    grad_checkpointing: bool = False

    @property
    def pretrained(self) -> bool:
        return not self.no_pretrained


@dataclass
class RecipeOptions:
    """How to fine-tune: schedule, optimizer, regularisation, model selection."""
    epochs: int = 10
    grad_accum: int = 1
    lr: float | None = None  # None: DEFAULT_LR (resolved by TrainConfig.from_options)
    head_lr: float | None = None  # None: 10 x lr when pretrained, else lr
    layer_decay: float = 1.0
    freeze_epochs: int = 0
    weight_decay: float = 0.05
    warmup: float = 0.1
    grad_clip: float = 1.0
    label_smoothing: float = 0.1
    mixup: float = 0.0
    cutmix: float = 0.0
    ema: float = 0.0
    patience: int = 5
    select_by: str = "accuracy"
    class_weights: str = "none"
    calibrate: bool = True
    seed: int = 42


@dataclass
class RuntimeOptions:
    """Where and how the run executes and what it writes; none of it changes the result."""
    device: str = "auto"
    precision: str = "auto"
    compile: bool = False
    output_dir: Path = Path("checkpoints")
    overwrite: bool = False  # replace a run already in output_dir (only this tool's files)
    track: str | None = None
    tracking_uri: str | None = None
    resume: str | None = None  # None: start afresh; "": DIR is --output-dir; "auto"; or DIR


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
            known = {option_name(f): f.name for f in dataclasses.fields(kind)}
            values = {known[key]: value for key, value in options.items() if key in known}
            for f in dataclasses.fields(kind):  # saved options hold paths as text
                if "Path" in str(f.type) and isinstance(values.get(f.name), str):
                    values[f.name] = Path(values[f.name])
            sections[section] = kind(**values)
        config = cls(**sections)
        config.validate()
        return config.with_default_lrs()

    def as_options(self) -> dict:
        """Every option by its dest, as plain data (paths as text): saved with the training state,
        logged to trackers, compared on resume."""
        flat = {}
        for section in SECTIONS:
            options = getattr(self, section)
            for f in dataclasses.fields(options):
                value = getattr(options, f.name)
                flat[option_name(f)] = str(value) if isinstance(value, Path) else value
        return flat

    def replace(self, **options) -> TrainConfig:
        """A copy with some options (by dest) changed, validated again."""
        return TrainConfig.from_options({**self.as_options(), **options})

    def with_default_lrs(self) -> TrainConfig:
        recipe, pretrained = self.recipe, self.model.pretrained
        lr = recipe.lr or DEFAULT_LR[pretrained]
        head_lr = recipe.head_lr or (10 * lr if pretrained else lr)
        return dataclasses.replace(self, recipe=dataclasses.replace(recipe, lr=lr, head_lr=head_lr))

    def problems(self) -> list[str]:
        """What is wrong with these options, one sentence each naming the option."""
        wrong_types = self.type_problems()
        if wrong_types:  # the checks below compare numbers: only once every value has its type
            return wrong_types
        d, m, r = self.data, self.model, self.recipe
        numbers = (d.val_split, r.lr or 1, r.head_lr or 1, r.layer_decay, r.weight_decay, r.warmup,
                   r.grad_clip, m.dropout, m.backbone_dropout, r.label_smoothing, r.mixup, r.cutmix, r.ema)
        if not all(math.isfinite(x) for x in numbers):
            return ["numeric options must be finite numbers, not nan or inf"]
        checks = [
            (r.epochs >= 1, "--epochs must be at least 1"),
            (d.batch_size >= 1, "--batch-size must be at least 1"),
            (r.grad_accum >= 1, "--grad-accum must be at least 1"),
            (0 < d.val_split < 1, "--val-split must be between 0 and 1"),
            (r.lr is None or r.lr > 0, "--lr must be positive"),
            (r.head_lr is None or r.head_lr > 0, "--head-lr must be positive"),
            (0 < r.layer_decay <= 1, "--layer-decay must be in (0, 1]"),
            (r.weight_decay >= 0, "--weight-decay must not be negative"),
            (0 <= r.warmup < 1, "--warmup is a fraction of the steps, from 0 to below 1"),
            (all(0 <= p < 1 for p in (m.dropout, m.backbone_dropout, r.label_smoothing)),
             "--dropout, --backbone-dropout and --label-smoothing: from 0 to below 1"),
            (all(a == 0 or MIX_ALPHA[0] <= a <= MIX_ALPHA[1] for a in (r.mixup, r.cutmix)),
             f"--mixup and --cutmix: 0 (off) or an alpha from {MIX_ALPHA[0]:g} to {MIX_ALPHA[1]:g}"),
            (0 <= r.ema < 1, "--ema is a decay from 0 (off) to below 1, e.g. 0.999"),
            (r.grad_clip >= 0, "--grad-clip must not be negative"),
            (min(r.patience, d.num_workers or 0, r.freeze_epochs, d.cache_mb) >= 0,
             "--patience, --num-workers, --freeze-epochs and --cache-mb must be >= 0"),
            (d.data_format in DATA_FORMATS, f"--data-format: choose from {', '.join(DATA_FORMATS)}"),
            (all(c is None or c.strip() for c in (d.image_column, d.label_column)),
             "--image-column and --label-column must name a column, not be empty"),
            ((d.num_workers or 0) <= max_workers(),
             f"--num-workers: at most {max_workers()} on this machine"),
            (m.image_size is None or MIN_IMAGE_SIZE <= m.image_size <= MAX_IMAGE_SIZE,
             f"--image-size must be from {MIN_IMAGE_SIZE} to {MAX_IMAGE_SIZE}"),
            (m.freeze in ("none", "backbone") or str(m.freeze).isdigit(),
             f"--freeze {m.freeze!r}: use none, backbone or a number of encoder blocks"),
            (r.select_by in SELECT_BY_CHOICES, f"--select-by: choose from {', '.join(SELECT_BY_CHOICES)}"),
            (r.class_weights in ("none", "auto"), "--class-weights: choose none or auto"),
            (self.runtime.precision in PRECISIONS, f"--precision: choose from {', '.join(PRECISIONS)}"),
            (self.runtime.device in DEVICES, f"--device: choose from {', '.join(DEVICES)}"),
        ]
        return [message for ok, message in checks if not ok]

    def type_problems(self) -> list[str]:
        """Options whose value is not of the option's type (e.g. restored from a damaged save)."""
        wrong = []
        for section in SECTIONS:
            options = getattr(self, section)
            for f in dataclasses.fields(options):
                value = getattr(options, f.name)
                if not matches_type(value, str(f.type)):
                    kinds = " or ".join(str(f.type).split(" | "))
                    wrong.append(f"--{option_name(f).replace('_', '-')} {str(value)[:40]!r} is not {kinds}")
        return wrong

    def validate(self) -> None:
        problems = self.problems()
        if problems:
            raise UserError("; ".join(problems))


def matches_type(value: object, annotation: str) -> bool:
    """Whether ``value`` fits a field annotation such as "int", "float | None" or "Path"."""
    kinds = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,), "Path": (Path,)}
    for name in annotation.split(" | "):
        if name == "None" and value is None:
            return True
        not_a_bool = name == "bool" or not isinstance(value, bool)  # True is an int to Python, not to us
        if name in kinds and isinstance(value, kinds[name]) and not_a_bool:
            return True
    return False


def max_workers() -> int:
    """More DataLoader workers than this only cost memory: they would wait for the cores."""
    return max(8, 4 * (os.cpu_count() or 1))


def option_name(f: dataclasses.Field) -> str:
    """The command-line dest of a config field (its name unless it says otherwise)."""
    return f.metadata.get("option", f.name)
