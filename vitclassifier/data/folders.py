"""Finding the images of a data set: class folders, the train/val split, the labels.

Labels are the sorted class folder names: the one label map, written into every checkpoint.
"""
from __future__ import annotations

import os
import random
import sys
from pathlib import Path

from vitclassifier.data.images import IMAGE_EXTENSIONS
from vitclassifier.errors import UserError

VAL_FOLDER_NAMES = ("val", "validation")


def validation_folder(root: Path) -> Path | None:
    """``root/val`` or ``root/validation``, whichever exists (None: neither)."""
    return next((root / name for name in VAL_FOLDER_NAMES if (root / name).is_dir()), None)


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
    val_dir = validation_folder(root)
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
