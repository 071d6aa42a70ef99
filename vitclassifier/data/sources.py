"""``--data`` in any of its forms, behind one interface (in the spirit of timm's reader factory):
``open_source`` tells the form and gives its ``Source``, which answers all that training, the audits
and ``--evaluate`` ask of the data, so that nothing outside data/ asks which form it has:

- ``folder``: class sub-folders (data/folders.py);
- ``labels``: a CSV, TSV or JSONL label file beside the images (data/labelfile.py);
- ``hf``: a Hugging Face dataset: a save_to_disk folder, parquet, or ``hf:ID`` (data/hfdata.py);
- ``shards``: WebDataset tar shards, streamed (data/shards.py).

The first three list their samples as ``(path or RowRef, label)``, which ImageFolderDataset reads;
shards give ShardSets, which stream. A Source reads --data when first asked (``labels``, ``train``,
``val``), so that ``--evaluate`` reads only the part it scores. ``auto`` tells the form from --data
where that is unambiguous.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import os
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path

from torch.utils.data import Dataset

from vitclassifier.data import multilabel  # several labels per image
from vitclassifier.data.audit import audit_dataset, format_report
from vitclassifier.data.dataset import ImageFolderDataset
from vitclassifier.data.exclude import apply_exclude
from vitclassifier.data.folders import folders_of, load_splits, scan_class_folders, validation_folder
from vitclassifier.data.hfdata import HUB_PREFIX, VAL_SPLITS, is_hf_data, load_hf, open_splits_of
from vitclassifier.data.labelfile import LABEL_FILE_SUFFIXES, VAL_VALUES, load_label_file, read_label_file
from vitclassifier.data.shardaudit import audit_shards
from vitclassifier.data.shardindex import open_shards
from vitclassifier.data.shards import INDEX_NAME, NameIndex, ShardSet, ShardStream, TrainStream, is_shards
from vitclassifier.errors import UserError
from vitclassifier.text import printable
from vitclassifier.urls import data_location, is_url, redact, shown


def detect_format(data: Path | str, data_format: str = "auto") -> str:
    """The form of --data (config.DATA_FORMATS): ``data_format`` when given, else told from the path.
    A URL (urls.is_url) names shards: the other forms are read from local paths only."""
    text = str(data)
    if is_url(data):
        if data_format not in ("auto", "shards"):
            raise UserError(f"--data {shown(text)}: only tar shards are read from a URL (--data-format "
                            f"{data_format} needs a local path); copy the data here, or write it as shards")
        return "shards"
    if data_format != "auto":
        return data_format
    if text.startswith(HUB_PREFIX):
        return "hf"
    if data.suffix.lower() in LABEL_FILE_SUFFIXES and not data.is_dir():
        return "labels"
    if is_shards(data):
        return "shards"
    if data.is_dir() and is_hf_data(data):
        return "hf"
    if data.is_file() and data.suffix.lower() == ".parquet":
        return "hf"
    if data.is_file():
        raise UserError(f"--data {printable(text)} is a file of no known form: give a class folder, a label "
                        f"file (.csv, .tsv, .jsonl), parquet, shards (.tar), or say --data-format")
    return "folder"


def data_fingerprint(samples: list[tuple[Path, int]], root: Path) -> str:
    """Which files, with which labels, make up the training set (to notice a changed folder on resume).
    Paths are hashed as the bytes of their names (os.fsencode), so a name that is not UTF-8 (a Latin-1
    ``café.jpg``) works too; UTF-8 names hash as they always did."""
    digest = hashlib.sha1()
    for path, label in samples:  # a dataset row (data/hfdata.RowRef) is named by its text
        name = os.fsencode(os.path.relpath(path, root)) if isinstance(path, Path) else str(path).encode()
        digest.update(name + f"\t{label}\n".encode())
    return digest.hexdigest()


class Source(ABC):
    """--data in one form: its label map and train/val split, and what each use of it needs."""
    form: str  # "folder" | "labels" | "hf" | "shards"
    streamed = False  # shards: train/val are streamed and plan their own epochs
    multi_label = False  # several labels per image (data/multilabel.py): samples carry multi-hot tuples

    def __init__(self, data: Path | str, val_split: float, seed: int, columns: tuple[str | None, str | None],
                 min_classes: int = 2, task: str = "auto", separator: str = ";"):
        self.data, self.val_split, self.seed, self.columns = data, val_split, seed, columns
        self.min_classes, self.task, self.separator = min_classes, task, separator
        self.exclude: dict | None = None  # what --exclude left out (data/exclude.apply_exclude's record)
        self._split: tuple[list[str], object, object] | None = None

    @abstractmethod
    def read(self) -> tuple[list[str], object, object]:
        """(labels, train, val) of --data in this form."""

    def _read_once(self) -> tuple[list[str], object, object]:
        if self._split is None:
            if self.task == "multi-label" and self.form not in ("labels", "hf"):
                raise UserError(f"--task multi-label reads several labels per image from a label file or a "
                                f"Hugging Face dataset (docs/multi-label.md), not from {self.form} data")
            self._split = self.read()
            train = self._split[1]  # several labels per image: multi-hot tuples (data/multilabel.py)
            self.multi_label = isinstance(train, list) and bool(train) and isinstance(train[0][1], tuple)
        return self._split

    def task_line(self) -> str:
        """single-label or multi-label (the run's first line says which), told without splitting --data
        where the form allows."""
        if self.task == "multi-label":
            self._read_once()  # refused where the form cannot hold several labels per image
        return "single-label"

    @property
    def labels(self) -> list[str]:
        """The class names, sorted: the label map."""
        return self._read_once()[0]

    def train(self):
        """The training samples: a list of (path or RowRef, label), or a ShardSet when streamed."""
        return self._read_once()[1]

    def val(self):
        """The validation samples, as ``train``."""
        return self._read_once()[2]

    def describe_split(self) -> dict:
        """Which source a run trained on (recorded in its checkpoint): the form, the path or Hub id, and
        what --exclude left out."""
        return {"form": self.form, "data": redact(str(self.data)),
                **({"exclude": self.exclude} if self.exclude is not None else {})}

    def held_out(self) -> str:
        if self.task_line() == "multi-label":
            return f"{self.val_split * 100:g}% held out by iterative stratification, seed {self.seed}"
        return f"{self.val_split * 100:g}% of each class held out, seed {self.seed}"

    def split_origin(self) -> str:
        """Where the train/val split came from, as ``--check-data`` reports it."""
        return f"the data's own train/val split when it has one, else {self.held_out()}"

    def refuse_unknown(self, found: list[str], labels: list[str], model_path: Path) -> None:
        """--evaluate: classes the model does not know are refused (where it knows more, fine)."""
        if unknown := sorted(set(found) - set(labels)):
            raise UserError(f"the classes of {shown(self.data)} don't match the checkpoint {model_path}: "
                            f"not in the checkpoint: {', '.join(map(printable, unknown[:10]))}")

    @abstractmethod
    def train_labels(self) -> list[int]:
        """Every training sample's label index (class weights, the balanced sampler)."""

    @abstractmethod
    def fingerprint(self) -> str:
        """What a resume compares: which training samples, with which labels (and --exclude's list)."""

    @abstractmethod
    def excluding(self, exclude: Path, quiet: bool = False) -> Source:
        """This source without the images the file ``exclude`` lists (train.py --exclude)."""

    @abstractmethod
    def quick_audit(self) -> None:
        """Before training, no image decoded: notes printed, what makes training impossible refused."""

    @abstractmethod
    def full_audit(self, image_size: int | None) -> dict:
        """``classifier.py --check-data``: every image decoded (data/audit.py's report)."""

    @abstractmethod
    def sample_index(self) -> dict:
        """Training image name -> its index, for the augmentation seeds (training/distributed.image_seed)."""

    def image_folders(self) -> set[str]:
        """The folders the image files are read from (outputs never go among them); shards: none."""
        return set() if self.streamed else folders_of((*self.train(), *self.val()))

    @abstractmethod
    def validation_data(self, transform, resize_size: int | None, batch_size: int) -> Dataset:
        """The whole validation set as the DataLoader reads it."""

    @abstractmethod
    def evaluation_source(self, labels: list[str], model_path: Path, transform, resize_size: int | None,
                          batch_size: int) -> tuple[str, Dataset]:
        """``train.py --evaluate``: (where, data set) of the labelled images to score, labelled by the
        model's label map ``labels``; classes it lacks are refused."""

    def training_data(self, decode, resize_size: int | None) -> Dataset:
        """The training samples as an ImageFolderDataset (forms that are not streamed)."""
        raise TypeError(f"{self.form} data is streamed: use training_stream")

    def training_stream(self, decode, resize_size: int | None, batch_size: int, per_step: int,
                        seed_of_epoch: Callable[[int], int], rank: int = 0, size: int = 1) -> TrainStream:
        """This process's training stream, planned per epoch (streamed forms)."""
        raise TypeError(f"{self.form} data is not streamed: use training_data")


class ListSource(Source):
    """The forms whose samples are listed one by one: (path or RowRef, label)."""

    def train_labels(self) -> list[int]:
        return [label for _, label in self.train()]

    def _audit(self, image_size: int | None, decode: bool = True) -> dict:
        labels, train, val = self._read_once()  # first: reading tells whether it is multi-label
        audit = multilabel.audit_multi_label if self.multi_label else audit_dataset
        return audit(labels, train, val, image_size=image_size, decode=decode)

    def fingerprint(self) -> str:
        digest = data_fingerprint(self.train(), self.data)
        return digest if self.exclude is None else f"{digest}+exclude:{self.exclude['sha256']}"

    def excluding(self, exclude: Path, quiet: bool = False) -> Source:
        """What was left out goes into describe_split (the checkpoint) and into the fingerprint, so a
        resume refuses a changed list as it refuses changed data."""
        train, val, record = apply_exclude(exclude, self.data, self.train(), self.val(), quiet=quiet)
        kept = copy.copy(self)
        kept._split, kept.exclude = (self.labels, train, val), record
        return kept

    def quick_audit(self) -> None:
        report = self._audit(None, decode=False)
        notes = format_report(report, brief=True)
        if notes:
            print(notes)
        if report["fatal"]:
            raise UserError("; ".join(report["fatal"]))

    def full_audit(self, image_size: int | None) -> dict:
        return self._audit(image_size)

    def sample_index(self) -> dict:
        return {str(path): index for index, (path, _) in enumerate(self.train())}

    def training_data(self, decode, resize_size: int | None) -> Dataset:
        return ImageFolderDataset(self.train(), decode, resize_size)

    def validation_data(self, transform, resize_size: int | None, batch_size: int) -> Dataset:
        return ImageFolderDataset(self.val(), transform, resize_size)

    def evaluation_source(self, labels: list[str], model_path: Path, transform, resize_size: int | None,
                          batch_size: int) -> tuple[str, Dataset]:
        where, samples = self.evaluation_samples(labels, model_path)
        return where, ImageFolderDataset(samples, transform, resize_size)

    @abstractmethod
    def evaluation_samples(self, labels: list[str], model_path: Path) -> tuple[str, list]:
        """(where, samples) to score: its own validation part when it has one, else all of it,
        labelled by the model's label map ``labels``."""

    def relabelled(self, samples: list, found: list[str], labels: list[str], model_path: Path) -> list:
        """Samples labelled by ``found`` relabelled by the model's label map ``labels``."""
        self.refuse_unknown(found, labels, model_path)
        return [(ref, labels.index(found[label])) for ref, label in samples]


class FolderSource(ListSource):
    """Class sub-folders, split by ``train/`` + ``val/`` folders or a stratified, seeded split."""
    form = "folder"

    def read(self) -> tuple[list[str], list, list]:
        return load_splits(self.data, self.val_split, self.seed, self.min_classes)

    def split_origin(self) -> str:
        root = self.data
        if all(isinstance(p, Path) and p.is_relative_to(root / "train") for p, _ in self.train()):
            # load_splits took them exactly when all training files lie so
            return f"the train/ and {validation_folder(root).name}/ folders"
        return self.held_out()

    def evaluation_samples(self, labels: list[str], model_path: Path) -> tuple[str, list]:
        """Its val/ folder when it has one (train/ need not be there), else all of it; the class folders
        must be exactly the model's."""
        root = validation_folder(self.data) or self.data
        classes = scan_class_folders(root)
        unknown, absent = sorted(set(classes) - set(labels)), sorted(set(labels) - set(classes))
        if unknown or absent:
            parts = [
                unknown and f"not in the checkpoint: {', '.join(unknown)}",
                absent and f"missing from the folder: {', '.join(absent)}",
            ]
            raise UserError(
                f"the classes of {root} don't match the checkpoint {model_path}: "
                + "; ".join(part for part in parts if part)
            )
        return str(root), [(path, labels.index(name)) for name in labels for path in classes[name]]


class LabelFileSource(ListSource):
    """A CSV, TSV or JSONL label file: its split column when it has one, else the stratified split."""
    form = "labels"

    def read(self) -> tuple[list[str], list, list]:
        if not self.data.is_file():
            raise UserError(f"label file {printable(str(self.data))} does not exist")
        if self.task_line() == "multi-label":
            return multilabel.load_multi_label_file(self.data, self.val_split, self.seed, self.separator,
                                                    *self.columns)
        return load_label_file(self.data, self.val_split, self.seed, *self.columns)

    def task_line(self) -> str:
        return multilabel.detect_task(self.data, self.task, self.separator, *self.columns)

    def evaluation_samples(self, labels: list[str], model_path: Path) -> tuple[str, list]:
        """The rows marked val when it has a split column, else every row (no split made)."""
        if self.task_line() == "multi-label":
            found, sets, splits = multilabel.read_multi_label_file(self.data, self.separator, *self.columns)
            chosen = {p: names for p, names in sets.items() if not splits or splits[p] in VAL_VALUES}
            return str(self.data), multilabel.relabel(chosen, found, labels, str(self.data), model_path)
        classes, splits = read_label_file(self.data, *self.columns)
        found = sorted(classes)
        samples = [(p, i) for i, name in enumerate(found) for p in classes[name]
                   if not splits or splits[p] in VAL_VALUES]
        return str(self.data), self.relabelled(samples, found, labels, model_path)


class HfSource(ListSource):
    """A Hugging Face dataset: its train and validation splits, else the stratified split."""
    form = "hf"

    def read(self) -> tuple[list[str], list, list]:
        return load_hf(self.data, self.val_split, self.seed, *self.columns)

    def task_line(self) -> str:
        return "multi-label" if self._read_once() and self.multi_label else "single-label"

    def evaluation_samples(self, labels: list[str], model_path: Path) -> tuple[str, list]:
        """Its validation split when it has one, else every row (no split made)."""
        found, train, val = self._read_once()
        own = any(name in open_splits_of(self.data) for name in VAL_SPLITS)
        chosen = val if own else train + val
        if self.multi_label:
            return str(self.data), multilabel.relabel_hot(chosen, found, labels, str(self.data), model_path)
        return str(self.data), self.relabelled(chosen, found, labels, model_path)


class ShardSource(Source):
    """WebDataset tar shards: nothing listed, every epoch streamed (data/shards.py)."""
    form, streamed = "shards", True

    def read(self) -> tuple[list[str], ShardSet, ShardSet]:
        return open_shards(self.data, self.val_split, self.seed)

    def split_origin(self) -> str:
        if self.train().holdout is None:
            return f"the train-*.tar and val-*.tar shards of {INDEX_NAME}"
        return (f"{self.val_split * 100:g}% of the samples held out by a hash of their keys, seed "
                f"{self.seed}")

    def train_labels(self) -> list[int]:
        return self.train().label_list()

    def fingerprint(self) -> str:
        return self.train().fingerprint()

    def excluding(self, exclude: Path, quiet: bool = False) -> Source:
        self._read_once()  # what is wrong with the shards is said first, as for the listed forms
        raise UserError("--exclude works on images listed one by one (folders, label files, datasets), "
                        "not on streamed tar shards: leave the files out of the shards instead")

    def quick_audit(self) -> None:
        """Shards are not read before training (their counts come from the index): nothing to audit."""

    def full_audit(self, image_size: int | None) -> dict:
        return audit_shards(self.labels, self.train(), self.val(), image_size)

    def sample_index(self) -> dict:
        return NameIndex()  # a stable hash of each name: no list of every sample is kept

    def training_stream(self, decode, resize_size: int | None, batch_size: int, per_step: int,
                        seed_of_epoch: Callable[[int], int], rank: int = 0, size: int = 1) -> TrainStream:
        return TrainStream(self.train(), decode, resize_size, batch_size, per_step, seed_of_epoch, rank, size)

    def validation_data(self, transform, resize_size: int | None, batch_size: int) -> Dataset:
        return ShardStream(self.val(), transform, resize_size, batch_size)

    def evaluation_source(self, labels: list[str], model_path: Path, transform, resize_size: int | None,
                          batch_size: int) -> tuple[str, Dataset]:
        """The validation shards when there are some, else every sample of the shards, streamed."""
        found, train, val = self._read_once()
        whole = val if val.holdout is None else dataclasses.replace(train, counts=[
            a + b for a, b in zip(train.counts, val.counts)], holdout=None)
        self.refuse_unknown(found, labels, model_path)
        relabelled = dataclasses.replace(whole, labels=labels, indexed=False)
        return redact(str(self.data)), ShardStream(relabelled, transform, resize_size, batch_size)


FORMS: dict[str, type[Source]] = {"folder": FolderSource, "labels": LabelFileSource, "hf": HfSource,
                                  "shards": ShardSource}


def open_source(data: Path | str, data_format: str = "auto", val_split: float = 0.2, seed: int = 42,
                image_column: str | None = None, label_column: str | None = None,
                min_classes: int = 2, task: str = "auto", separator: str = ";") -> Source:
    """--data as the Source of its form (nothing read yet): a local path, or a URL as text (text that
    is no URL is taken as a path). ``min_classes``: class folders with fewer are refused (--check-data
    reports a single class instead). ``task``, ``separator``: --task and --label-separator (several
    labels per image: data/multilabel.py)."""
    data = data_location(data) if isinstance(data, str) else data
    return FORMS[detect_format(data, data_format)](data, val_split, seed, (image_column, label_column),
                                                   min_classes, task, separator)
