"""Finding the images of a data set: class folders, the train/val split, the labels.

Labels are the sorted class folder names: the one label map, written into every checkpoint.
"""
from __future__ import annotations

import os
import random
import stat
import sys
from pathlib import Path

from vitclassifier.data.images import IMAGE_EXTENSIONS, file_kind
from vitclassifier.errors import UserError

VAL_FOLDER_NAMES = ("val", "validation")
SKIPPED_NAMED = 5  # non-regular files named one by one per folder scanned; the rest are counted
NAMED_CLASSES = 10  # an error about many classes names this many, then counts the rest


def utf8_safe(text: str | os.PathLike) -> str:
    """A path (or a message naming one) as valid Unicode, for JSON, CSV and the terminal. A file name
    that is not UTF-8 (a Latin-1 ``café.jpg`` from an old archive) keeps its odd bytes as ``\\xNN``
    (``caf\\xe9.jpg``); any other text is returned unchanged."""
    text = os.fspath(text) if isinstance(text, (str, bytes, os.PathLike)) else str(text)  # str: a dataset row
    if isinstance(text, bytes):
        return text.decode("utf-8", "backslashreplace")
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate no file name decodes to
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def validation_folder(root: Path) -> Path | None:
    """``root/val`` or ``root/validation``, whichever exists (None: neither)."""
    return next((root / name for name in VAL_FOLDER_NAMES if (root / name).is_dir()), None)


def _not_regular(path: Path) -> str | None:
    """What ``path`` is when it is not a regular file (nor a link to one), else None. A path that
    cannot be looked at (a broken link) counts as a file: decoding names what is wrong with it."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    return None if stat.S_ISREG(mode) else file_kind(mode)


def _note_skipped(skipped: list[tuple[Path, str]]) -> None:
    for path, kind in skipped[:SKIPPED_NAMED]:
        print(f"note: skipped {utf8_safe(path)}: {kind}, not a regular file (only regular files are images)",
              file=sys.stderr)
    if len(skipped) > SKIPPED_NAMED:
        print(f"note: skipped {len(skipped) - SKIPPED_NAMED} more non-regular file(s) with image names",
              file=sys.stderr)


def list_images(folder: Path) -> list[Path]:
    """Image files under ``folder``, recursively, sorted; hidden files and folders are skipped.
    Only regular files (or links to them) are images: a named pipe, a device or a socket with an
    image name is skipped, and named on stderr (reading one would block for ever, or never end)."""
    found, skipped, visited = [], [], set()
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in visited:  # a symlink back into the tree: walk each real folder once
            dirnames[:] = []
            continue
        visited.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        base = Path(dirpath)
        for path in [base / name for name in sorted(filenames)
                     if not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS]:
            kind = _not_regular(path)
            if kind:
                skipped.append((path, kind))
            else:
                found.append(path)
    _note_skipped(skipped)
    return found


def scan_class_folders(root: Path, min_classes: int = 2) -> dict[str, list[Path]]:
    """Map each class (sub-folder name, sorted) to its image files; empty classes are left out.
    Fewer than ``min_classes`` classes is a UserError (--check-data takes one, to report it)."""
    if root.exists() and not root.is_dir():
        raise UserError(f"data folder {root} is a file, not a folder. Give the folder that holds one "
                        f"sub-folder per class")
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
            classes[utf8_safe(sub.name)] = files  # the label: valid Unicode, whatever the folder name
        else:
            print(f"warning: class folder {sub} has no images; leaving it out", file=sys.stderr)
    if len(classes) < min_classes:
        needed = "two class sub-folders" if min_classes == 2 else f"{min_classes} class sub-folder(s)"
        raise UserError(f"{root} needs at least {needed} with images, found {len(classes)}")
    return classes


def stratified_split(classes: dict[str, list[Path]], val_split: float, seed: int):
    """Split every class on its own with a seeded shuffle, so both sides keep the class balance."""
    train, val = [], []
    tiny = [name for name in sorted(classes) if len(classes[name]) < 2]
    if tiny:
        named = f"class {tiny[0]!r} has {len(classes[tiny[0]])} image" if len(tiny) == 1 else (
            f"{len(tiny)} classes have fewer than 2 images: {', '.join(tiny[:NAMED_CLASSES])}"
            + (f", ... ({len(tiny) - NAMED_CLASSES} more)" if len(tiny) > NAMED_CLASSES else ""))
        raise UserError(f"{named}; a train/validation split needs at least 2 per class (add images or "
                        f"provide train/ and val/ folders)")
    for label, name in enumerate(sorted(classes)):
        files = list(classes[name])
        random.Random(f"{seed}/{name}").shuffle(files)
        n_val = min(len(files) - 1, max(1, round(len(files) * val_split)))
        val += [(path, label) for path in files[:n_val]]
        train += [(path, label) for path in files[n_val:]]
    return train, val


def load_splits(root: Path, val_split: float, seed: int, min_classes: int = 2):
    """Return (labels, train samples, val samples); uses root/train and root/val when present.
    ``min_classes``: as scan_class_folders (--check-data reports a single class instead of refusing it)."""
    val_dir = validation_folder(root)
    if (root / "train").is_dir() and val_dir is not None:
        train_classes = scan_class_folders(root / "train", min_classes)
        val_classes = scan_class_folders(val_dir, min_classes)
        unknown = sorted(set(val_classes) - set(train_classes))
        if unknown:
            raise UserError(f"{val_dir} has classes that {root / 'train'} lacks: {', '.join(unknown)}")
        labels = sorted(train_classes)
        index = {name: i for i, name in enumerate(labels)}
        train = [(p, index[n]) for n in labels for p in train_classes[n]]
        val = [(p, index[n]) for n in sorted(val_classes) for p in val_classes[n]]
        return labels, train, val
    classes = scan_class_folders(root, min_classes)
    return sorted(classes), *stratified_split(classes, val_split, seed)


def folders_of(samples) -> set[str]:
    """The folders the image files among ``samples`` (path, or (path, label)) lie in, once each: a
    label file's may lie anywhere beside it, and no output may go among them. Dataset rows have none."""
    paths = (sample[0] if isinstance(sample, tuple) else sample for sample in samples)
    return {os.path.dirname(path) for path in paths if isinstance(path, (str, Path))}
