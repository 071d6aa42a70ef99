"""The data side of the ViT image classifier.

This module holds the data side that train.py and predict.py share:
  * the folder data set (one sub-folder per class), its split and transforms,
  * the one definition of evaluation preprocessing (``Preprocessing``, ``eval_transform``),
  * the data command line: ``python classifier.py --generate-data`` (drawn by synthetic.py).

The ViT wrapper lives in model.py, safe image decoding in images.py, checkpoint files in
checkpoint.py.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms import v2

from images import IMAGE_EXTENSIONS, load_image


class UserError(Exception):
    """A mistake the user can fix: printed as one line, no traceback."""


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows "(default: X)" in --help, except for flags and options without a default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or action.default is False or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


# ---------------------------------------------------------------------------
# The folder data set
# ---------------------------------------------------------------------------
def list_images(folder: Path) -> list[Path]:
    """Image files under ``folder``, recursively, sorted; hidden files and folders are skipped."""
    found, visited = [], set()
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in visited:  # a symlink back into the tree: walk each real folder once
            dirnames[:] = []
            continue
        visited.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        base = Path(dirpath)
        found += [base / name for name in sorted(filenames)
                  if not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS]
    return found


def scan_class_folders(root: Path) -> dict[str, list[Path]]:
    """Map each class (sub-folder name, sorted) to its image files; empty classes are left out."""
    if not root.is_dir():
        raise UserError(f"data folder {root} does not exist. Give a folder with one sub-folder per "
                        f"class, or run `python classifier.py --generate-data` first")
    classes = {}
    stray = [p.name for p in root.iterdir()
             if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS]
    if stray:
        print(f"note: {len(stray)} image(s) directly in {root} belong to no class and are ignored "
              f"(e.g. {sorted(stray)[0]}); move them into a class sub-folder", file=sys.stderr)
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = list_images(sub)
        if files:
            classes[sub.name] = files
        else:
            print(f"warning: class folder {sub} has no images; leaving it out", file=sys.stderr)
    if len(classes) < 2:
        raise UserError(f"{root} needs at least two class sub-folders with images, found {len(classes)}")
    return classes


def stratified_split(classes: dict[str, list[Path]], val_split: float, seed: int):
    """Split every class on its own with a seeded shuffle, so both sides keep the class balance."""
    train, val = [], []
    for label, name in enumerate(sorted(classes)):
        files = list(classes[name])
        if len(files) < 2:
            raise UserError(f"class {name!r} has {len(files)} image; a train/validation split needs at "
                            f"least 2 per class (add images or provide train/ and val/ folders)")
        random.Random(f"{seed}/{name}").shuffle(files)
        n_val = min(len(files) - 1, max(1, round(len(files) * val_split)))
        val += [(path, label) for path in files[:n_val]]
        train += [(path, label) for path in files[n_val:]]
    return train, val


def load_splits(root: Path, val_split: float, seed: int):
    """Return (labels, train samples, val samples); uses root/train and root/val when present."""
    val_dir = next((root / n for n in ("val", "validation") if (root / n).is_dir()), None)
    if (root / "train").is_dir() and val_dir is not None:
        train_classes = scan_class_folders(root / "train")
        val_classes = scan_class_folders(val_dir)
        unknown = sorted(set(val_classes) - set(train_classes))
        if unknown:
            raise UserError(f"{val_dir} has classes that {root / 'train'} lacks: {', '.join(unknown)}")
        labels = sorted(train_classes)
        index = {name: i for i, name in enumerate(labels)}
        train = [(p, index[n]) for n in labels for p in train_classes[n]]
        val = [(p, index[n]) for n in sorted(val_classes) for p in val_classes[n]]
        return labels, train, val
    classes = scan_class_folders(root)
    return sorted(classes), *stratified_split(classes, val_split, seed)


class ImageFolderDataset(Dataset):
    """(path, label) samples decoded on demand. A file that fails to decode yields
    ``(None, label, path, reason)`` instead of raising, so one bad image never stops a run.

    With ``epoch_seed`` set, the random augmentation of sample i is seeded from (epoch_seed, i)
    alone, so it is the same whatever the worker count, process count or resume point."""

    def __init__(self, samples: list[tuple[Path, int]], transform, decode_size: int | None = None):
        self.samples, self.transform, self.decode_size = samples, transform, decode_size
        self.epoch_seed: int | None = None

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, label = self.samples[index]
        try:
            image = load_image(path, self.decode_size)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
            return None, label, str(path), f"{type(error).__name__}: {error}"
        if self.epoch_seed is not None:
            torch.manual_seed(self.epoch_seed * 1_000_003 + index)
        return self.transform(image), label, str(path), None


def collate_skipping_bad(batch):
    """Stack the good samples. Returns (images, labels, their paths, [(bad path, reason)]);
    images and labels are None when the whole batch was bad."""
    good = [item for item in batch if item[0] is not None]
    bad = [(item[2], item[3]) for item in batch if item[0] is None]
    if not good:
        return None, None, [], bad
    return (torch.stack([item[0] for item in good]), torch.tensor([item[1] for item in good]),
            [item[2] for item in good], bad)


# ---------------------------------------------------------------------------
# Preprocessing: one definition, read from and written to the checkpoint
# ---------------------------------------------------------------------------
@dataclass
class Preprocessing:
    """What a model expects of its input; saved as the checkpoint's preprocessor_config.json."""
    image_size: int = 224
    crop_pct: float = 0.875
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    @property
    def resize_size(self) -> int:
        return int(self.image_size / self.crop_pct)

    @classmethod
    def from_image_processor(cls, processor, image_size: int | None = None) -> "Preprocessing":
        """Read size, crop ratio, mean and std from any Hugging Face image processor."""
        size = processor.size or {}
        crop = getattr(processor, "crop_size", None) or {}
        native = crop.get("height") or size.get("shortest_edge") or size.get("height") or 224
        if getattr(processor, "crop_pct", None):
            crop_pct = processor.crop_pct
        elif crop.get("height") and getattr(processor, "do_center_crop", False):
            crop_pct = crop["height"] / (size.get("shortest_edge") or size.get("height"))
        else:
            crop_pct = 1.0  # processors like ViT's resize straight to the model's size
        return cls(image_size or native, min(1.0, crop_pct),
                   tuple(processor.image_mean), tuple(processor.image_std))

    def to_image_processor(self):
        """An image processor doing exactly eval_transform, so transformers.pipeline agrees with us."""
        from transformers import ConvNextImageProcessor
        return ConvNextImageProcessor(size={"shortest_edge": self.image_size}, crop_pct=self.crop_pct,
                                      image_mean=list(self.mean), image_std=list(self.std), resample=3)


def _resize_and_centre_crop(prep: Preprocessing) -> list:
    return [v2.Resize(prep.resize_size, interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
            v2.CenterCrop(prep.image_size)]


def _to_normalised_float(prep: Preprocessing) -> list:
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(prep.mean, prep.std)]


def eval_transform(prep: Preprocessing) -> v2.Compose:
    """THE evaluation preprocessing: validation and predict.py both use exactly this."""
    return v2.Compose([v2.PILToTensor(), *_resize_and_centre_crop(prep), *_to_normalised_float(prep)])


def train_transform(prep: Preprocessing, crop: bool = True, flip: bool = True, rotate: bool = True,
                    color_jitter: bool = True) -> v2.Compose:
    """Training augmentation; each part can be switched off. With all off it equals eval_transform."""
    steps = [v2.PILToTensor()]
    if rotate:
        steps.append(v2.RandomRotation(15, interpolation=v2.InterpolationMode.BILINEAR))
    if crop:
        steps.append(v2.RandomResizedCrop(prep.image_size, scale=(0.6, 1.0), antialias=True))
    else:
        steps += _resize_and_centre_crop(prep)
    if flip:
        steps.append(v2.RandomHorizontalFlip())
    if color_jitter:
        steps.append(v2.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.05))
    return v2.Compose(steps + _to_normalised_float(prep))


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------
def check_data(args: argparse.Namespace) -> int:
    """``--check-data DIR``: print (and optionally write as JSON) the audit; 1 if training is impossible."""
    from audit import audit_dataset, format_report
    root = args.check_data
    try:
        if not 0 < args.val_split < 1:
            raise UserError(f"--val-split must be between 0 and 1, got {args.val_split}")
        labels, train, val = load_splits(root, args.val_split, args.split_seed)
        # load_splits took the split from root/train and root/val exactly when all training files lie there
        split = ("the train/ and val/ folders" if all(p.is_relative_to(root / "train") for p, _ in train)
                 else f"{args.val_split * 100:g}% of each class held out, seed {args.split_seed}")
        report = {"data": str(root), "split": split,
                  **audit_dataset(labels, train, val, args.image_size or 224)}
        if args.json and args.json != "-":
            Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    except (UserError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    # With the JSON on stdout, the text goes to stderr so that stdout stays parseable.
    print(format_report(report), file=sys.stderr if args.json == "-" else sys.stdout)
    if args.json == "-":
        print(json.dumps(report, indent=2))
    return 1 if report["fatal"] else 0


def main(argv: list[str] | None = None) -> int:
    from synthetic import DEFAULT_CLASSES, SHAPES, at_least, generate_data, parse_classes
    parser = argparse.ArgumentParser(description="Data tools for the ViT image classifier.",
                                     formatter_class=HelpFormatter)
    command = parser.add_mutually_exclusive_group()
    command.add_argument("--generate-data", action="store_true",
                         help="write a synthetic shapes data set (one sub-folder per class) and sample images")
    command.add_argument("--check-data", type=Path, metavar="DIR",
                         help="audit a data set as train.py will read it: class counts, unreadable, small "
                              "and duplicate files, class imbalance. Exit code 1 if training is impossible")
    parser.add_argument("--image-size", type=at_least(16), default=None, metavar="N",
                        help="--generate-data: side of each image in pixels (default: 64); --check-data: "
                             "the model input size, smaller images are reported (default: 224)")
    generate = parser.add_argument_group("--generate-data options")
    generate.add_argument("--out", type=Path, default=Path("data"), help="where to write the data set")
    generate.add_argument("--classes", type=parse_classes, default=DEFAULT_CLASSES,
                          help=f"comma-separated shapes, or a count; available: {', '.join(SHAPES)}")
    generate.add_argument("--per-class", type=at_least(2), default=1200, help="images per class")
    generate.add_argument("--seed", type=int, default=0, help="random seed; same seed, same files")
    generate.add_argument("--samples-dir", type=Path, default=Path("."),
                          help="where sample.jpg and samples/ go")
    check = parser.add_argument_group("--check-data options")
    check.add_argument("--val-split", type=float, default=0.2,
                       help="fraction of each class held out for validation; must match train.py's "
                            "--val-split (ignored with train/ and val/ folders)")
    check.add_argument("--split-seed", type=int, default=42,
                       help="seed of the train/validation split; must match train.py's --seed")
    check.add_argument("--json", metavar="FILE", help="also write the report as JSON ('-' for stdout)")
    args = parser.parse_args(argv)
    if args.check_data:
        return check_data(args)
    if not args.generate_data:
        parser.print_help()
        return 0
    generate_data(args.out, args.classes, args.per_class, args.image_size or 64, args.seed, args.samples_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
