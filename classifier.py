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
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms import v2

from images import DECODE_ERRORS, IMAGE_EXTENSIONS, load_image

FILL_CHUNK = 256  # images decoded ahead while filling the cache


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

    ``transform`` is a TwoStage: its deterministic ``decode`` stage (decode, resize) can be kept
    in a bounded uint8 cache by ``fill_cache``, so later epochs skip JPEG decoding; its ``finish``
    stage (random augmentation, normalisation) runs on every access.
    With ``epoch_seed`` set, the random augmentation of sample i is seeded from (epoch_seed, i)
    alone, so it is the same whatever the worker count, process count or resume point."""

    def __init__(self, samples: list[tuple[Path, int]], transform: "TwoStage", decode_size: int | None = None):
        self.samples, self.transform, self.decode_size = samples, transform, decode_size
        self.epoch_seed: int | None = None
        self.cache: dict[int, torch.Tensor | str] = {}  # index -> decoded uint8 pixels, or why it failed

    def __len__(self) -> int:
        return len(self.samples)

    def decode(self, index: int) -> torch.Tensor | str:
        """The cached or freshly decoded uint8 pixels of sample ``index``, or the reason it is unreadable."""
        if index in self.cache:
            return self.cache[index]
        try:
            return self.transform.decode(load_image(self.samples[index][0], self.decode_size))
        except DECODE_ERRORS as error:
            return f"{type(error).__name__}: {error}"

    def __getitem__(self, index: int):
        path, label = self.samples[index]
        pixels = self.decode(index)
        if isinstance(pixels, str):
            return None, label, str(path), pixels
        if self.epoch_seed is not None:
            torch.manual_seed(self.epoch_seed * 1_000_003 + index)
        return self.transform.finish(pixels), label, str(path), None

    def fill_cache(self, max_bytes: int, num_threads: int = 1) -> tuple[int, int]:
        """Decode images once, on ``num_threads`` threads, into the cache until it holds ``max_bytes``;
        the rest is decoded on every access. Call it before the training loaders start their
        workers: they are forked from this process and share the cache. Returns (images cached,
        bytes used). Threads, not processes: Pillow and torch let go of the GIL while they decode
        and resize, and nothing has to be copied back (3x faster than worker processes here)."""
        used = 0
        with ThreadPoolExecutor(num_threads) as pool:
            for start in range(0, len(self), FILL_CHUNK):  # in chunks: stop decoding once the budget is spent
                indices = range(start, min(start + FILL_CHUNK, len(self)))
                for index, pixels in zip(indices, pool.map(self.decode, indices)):
                    size = pixels.numel() if isinstance(pixels, torch.Tensor) else 0
                    if used + size > max_bytes:
                        return len(self.cache), used
                    self.cache[index] = pixels
                    used += size
        return len(self.cache), used


def fill_caches(datasets: list[ImageFolderDataset], max_bytes: int) -> str:
    """Fill the datasets' caches in turn, decoding on every core, within ``max_bytes`` in all; says what it did."""
    start, used, cached = time.time(), 0, 0
    threads = min(8, os.cpu_count() or 1)  # nothing else runs yet
    for dataset in datasets:
        count, size = dataset.fill_cache(max_bytes - used, threads)
        cached, used = cached + count, used + size
    missed = sum(len(dataset) for dataset in datasets) - cached
    return (f"Decoded {cached} images once into a {used / 2**20:.0f} MiB cache in {time.time() - start:.1f}s"
            + (f"; {missed} more are decoded every epoch (raise --cache-mb)" if missed else ""))


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


@dataclass
class TwoStage:
    """A transform in two steps: ``decode`` (deterministic: PIL image -> resized uint8 tensor, the
    part worth caching) and ``finish`` (random augmentation on uint8, then float and normalise)."""
    decode: v2.Compose
    finish: v2.Compose

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self.finish(self.decode(image))


def _resize(prep: Preprocessing) -> v2.Resize:
    return v2.Resize(prep.resize_size, interpolation=v2.InterpolationMode.BICUBIC, antialias=True)


def _to_normalised_float(prep: Preprocessing) -> list:
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(prep.mean, prep.std)]


def eval_transform(prep: Preprocessing) -> TwoStage:
    """THE evaluation preprocessing: validation and predict.py both use exactly this."""
    return TwoStage(v2.Compose([v2.PILToTensor(), _resize(prep), v2.CenterCrop(prep.image_size)]),
                    v2.Compose(_to_normalised_float(prep)))


def train_transform(prep: Preprocessing, crop: bool = True, flip: bool = True, rotate: bool = True,
                    color_jitter: bool = True) -> TwoStage:
    """Training augmentation; each part can be switched off. With all off it equals eval_transform.

    Every image is first resized so its short side is ``prep.resize_size`` (cacheable); the random
    steps then work on that small uint8 image, which is much cheaper than on a full-size photo."""
    steps = []
    if rotate:
        steps.append(v2.RandomRotation(15, interpolation=v2.InterpolationMode.BILINEAR))
    if crop:
        steps.append(v2.RandomResizedCrop(prep.image_size, scale=(0.6, 1.0), antialias=True))
    else:
        steps.append(v2.CenterCrop(prep.image_size))
    if flip:
        steps.append(v2.RandomHorizontalFlip())
    if color_jitter:  # no hue shift: it cost 3 ms an image, 5x the rest of the jitter
        steps.append(v2.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3))
    return TwoStage(v2.Compose([v2.PILToTensor(), _resize(prep)]), v2.Compose(steps + _to_normalised_float(prep)))


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
