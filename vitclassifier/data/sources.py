"""``--data`` in any of its forms, to (labels, training samples, validation samples):

- ``folder``: class sub-folders (data/folders.py);
- ``labels``: a CSV, TSV or JSONL label file beside the images (data/labelfile.py);
- ``hf``: a Hugging Face dataset: a save_to_disk folder, parquet, or ``hf:ID`` (data/hfdata.py);
- ``shards``: WebDataset tar shards, streamed (data/shards.py).

The first three give lists of ``(path or RowRef, label)`` that ImageFolderDataset reads; shards give
ShardSets that training streams. ``auto`` tells the form from --data where that is unambiguous.
"""
from __future__ import annotations

from pathlib import Path

from vitclassifier.data.folders import load_splits
from vitclassifier.data.hfdata import HUB_PREFIX, is_hf_data, load_hf
from vitclassifier.data.labelfile import LABEL_FILE_SUFFIXES, load_label_file
from vitclassifier.data.shards import ShardSet, is_shards, open_shards
from vitclassifier.errors import UserError
from vitclassifier.text import printable


def detect_format(data: Path, data_format: str = "auto") -> str:
    """The form of --data (config.DATA_FORMATS): ``data_format`` when given, else told from the path."""
    if data_format != "auto":
        return data_format
    text = str(data)
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


def load_source(data: Path, val_split: float, seed: int, data_format: str = "auto",
                image_column: str | None = None, label_column: str | None = None,
                ) -> tuple[list[str], object, object]:
    """(labels, train, val) of --data in its form: lists of (path or RowRef, label), or ShardSets."""
    form = detect_format(data, data_format)
    if form == "labels":
        if not data.is_file():
            raise UserError(f"label file {printable(str(data))} does not exist")
        return load_label_file(data, val_split, seed, image_column, label_column)
    if form == "hf":
        return load_hf(data, val_split, seed, image_column, label_column)
    if form == "shards":
        return open_shards(data, val_split, seed)
    return load_splits(data, val_split, seed)


def describe_source(data: Path, data_format: str = "auto") -> dict:
    """Which source a run trained on (recorded in its checkpoint): the form and the path or Hub id."""
    return {"form": detect_format(data, data_format), "data": str(data)}


def is_stream(samples: object) -> bool:
    """Shards are streamed; every other form is a list of samples."""
    return isinstance(samples, ShardSet)
