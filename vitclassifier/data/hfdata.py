"""Hugging Face datasets as training data: a folder written by ``save_to_disk``, parquet files, or a
Hub id (``hf:beans``). The ``datasets`` package is optional (requirements-extras.txt).

Rows stay in the dataset's memory-mapped Arrow files: a sample is a ``RowRef`` (which table, which
row), and its image bytes are read only when the row is decoded, through the same safe
``load_image`` as files. Class names come from a ``ClassLabel`` feature when there is one (else the
label column's distinct values), sorted like class folders; the dataset's own train/validation
splits are used when it has them, else the folders' stratified, seeded split. A ``Sequence(ClassLabel)``
column gives several labels per image (``load_label_sets``: multi-hot samples, data/multilabel.py).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from vitclassifier.data.folders import stratified_split
from vitclassifier.data.images import file_bound, read_regular, too_many_bytes
from vitclassifier.data.labelfile import IMAGE_COLUMNS, LABEL_COLUMNS, find_column
from vitclassifier.data.multilabel import iterative_split, multi_hot
from vitclassifier.errors import UserError
from vitclassifier.hub import hub_reachable
from vitclassifier.text import printable

HUB_PREFIX = "hf:"
INSTALL = "pip install datasets (or pip install -r requirements-extras.txt)"
VAL_SPLITS = ("validation", "val", "valid")
OFFLINE_WAYS_OUT = ("Ways out: connect once so that it is cached; or save it with "
                    "datasets' save_to_disk (or as parquet) and pass that folder as --data")


def is_hf_data(path: Path) -> bool:
    """A Hub id (hf:...), a save_to_disk folder, a parquet file, or a folder of parquet files."""
    if str(path).startswith(HUB_PREFIX):
        return True
    if path.is_file():
        return path.suffix.lower() == ".parquet"
    markers = ("dataset_dict.json", "state.json")
    # top level and one below (data/*.parquet) only: never a walk through a whole class folder
    return path.is_dir() and (any((path / m).is_file() for m in markers) or any(path.glob("*.parquet"))
                              or any(path.glob("*/*.parquet")))


def _datasets():
    try:
        import datasets
    except ImportError:
        raise UserError(f"Hugging Face datasets as --data need the datasets package: {INSTALL}") from None
    return datasets


def _load_from_hub(datasets, name: str) -> dict:
    """A Hub dataset: downloaded when the Hub answers, else from the local cache, else one clear error."""
    online = hub_reachable()
    if not online:
        datasets.config.HF_HUB_OFFLINE = True  # no retry loop against an unreachable Hub: the cache only
    try:
        return dict(datasets.load_dataset(name))
    except Exception as error:  # datasets raises many kinds (connection, not found, offline cache miss)
        if online:
            raise UserError(f"--data hf:{printable(name)}: the Hub could not give it "
                            f"({printable(str(error).splitlines()[0][:200])})") from None
        raise UserError(f"the dataset {printable(name)!r} can't be downloaded (no connection to the Hugging "
                        f"Face Hub) and is not in the local cache. {OFFLINE_WAYS_OUT}") from None


def open_splits_of(path: Path) -> dict:
    """{split name: datasets.Dataset} of --data (memory-mapped; nothing is read into memory)."""
    datasets = _datasets()
    text = str(path)
    if text.startswith(HUB_PREFIX):
        return _load_from_hub(datasets, text[len(HUB_PREFIX):])
    try:
        if path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file()):
            loaded = datasets.load_from_disk(text)
            return dict(loaded) if isinstance(loaded, datasets.DatasetDict) else {"train": loaded}
        files = {"data_files": text} if path.is_file() else {"data_dir": text}
        splits = dict(datasets.load_dataset("parquet", **files))
        for split in splits.values():
            for copy in split.cache_files:
                _note_arrow_copy(text, str(Path(copy["filename"]).parent))
        return splits
    except (OSError, ValueError, IndexError) as error:  # datasets' IndexError: a saved split of 0 rows
        raise UserError(f"cannot read the Hugging Face dataset {printable(str(path))}: "
                        f"{_empty_part(datasets, path, error) or printable(error)}") from None


def _empty_part(datasets, path: Path, error: Exception) -> str | None:
    """Why a dataset failed to load when a part of it has 0 rows, naming that split or file (datasets
    says only 'list index out of range' or 'Instruction ... corresponds to no data'). Looked for only
    after a failure, so an empty part that loads is never refused."""
    way_out = "remove it or give it rows"
    if path.is_dir() and (path / "dataset_dict.json").is_file():
        for split in sorted(p.name for p in path.iterdir() if (p / "state.json").is_file()):
            try:
                datasets.load_from_disk(str(path / split))
            except IndexError:
                return f"its {printable(split)} split has 0 rows ({way_out})"
            except (OSError, ValueError):
                continue  # damaged otherwise: datasets' own reason stands
    if isinstance(error, IndexError) and (path / "state.json").is_file():
        return "it has 0 rows"  # a single Dataset saved with save_to_disk
    import pyarrow.parquet as pq  # datasets' own dependency
    files = [path] if path.is_file() else sorted([*path.glob("*.parquet"), *path.glob("*/*.parquet")])
    for file in files:
        try:
            if pq.read_metadata(file).num_rows == 0:
                return f"its parquet file {printable(str(file))} has 0 rows ({way_out})"
        except (OSError, ValueError):
            continue  # not a parquet file: datasets' own reason stands
    return None


@cache
def _note_arrow_copy(data: str, folder: str) -> None:
    """Caches are named: datasets reads parquet through an Arrow copy that stays in its cache after the
    run. Said once per folder and process."""
    print(f"note: {printable(data)} is read through an Arrow copy in the datasets cache, {printable(folder)} "
          f"(it stays after this run: remove it when done; HF_DATASETS_CACHE puts it elsewhere)",
          file=sys.stderr)


def _column(features: dict, wanted: str | None, kinds: tuple, names: tuple, option: str, where: str) -> str:
    typed = [name for name, feature in features.items() if isinstance(feature, kinds)]
    # a column of the right type comes first, unless one is named; then the usual names
    found = (typed[0] if wanted is None and typed else
             find_column(list(features), wanted, names, option, where))
    if not found:
        what = "image" if option == "--image-column" else "label"
        raise UserError(f"the Hugging Face dataset {printable(str(where))} has no {what} column (its "
                        f"columns: "
                        f"{', '.join(map(printable, features))}); name it with {option}")
    return found


def _within_bound(data: bytes, row: int) -> bytes:
    """A cell's image bytes, refused (FileTooLarge) over the byte bound, as a file's would be."""
    if len(data) > file_bound():
        raise too_many_bytes(f"the image cell of row {row}", len(data), file_bound())
    return data


@dataclass(eq=False)
class Table:
    """One split of a dataset, with its image column read undecoded (the bytes, as stored)."""
    name: str
    dataset: object = field(repr=False)
    image_column: str = "image"

    def image_bytes(self, row: int) -> bytes:
        value = self.dataset[row][self.image_column]
        if isinstance(value, dict):  # an Image feature undecoded: {"bytes": ..., "path": ...}
            if value.get("bytes") is not None:
                return _within_bound(value["bytes"], row)
            if value.get("path"):
                return read_regular(value["path"])  # a regular file, within the byte bound
            raise OSError("the row holds no image")
        if isinstance(value, (bytes, bytearray)):
            return bytes(_within_bound(value, row))
        raise OSError(f"the image column holds {type(value).__name__}, not image bytes")


@dataclass(frozen=True)
class RowRef:
    """A sample that is a row of a dataset: shown as ``name[row]``, decoded through its bytes."""
    name: str
    row: int
    table: Table = field(compare=False, repr=False)

    def image_bytes(self) -> bytes:
        return self.table.image_bytes(self.row)

    def __str__(self) -> str:
        return f"{self.name}[{self.row}]"


def _classes_of(dataset, label: str, where: str) -> tuple[list[str], list]:
    """(the dataset's class names in its own order, or None for plain values; each row's label)."""
    datasets = _datasets()
    feature = dataset.features[label]
    values = list(dataset.select_columns([label])[label])
    if isinstance(feature, datasets.ClassLabel):
        return list(feature.names), values
    if any(isinstance(v, (list, dict)) for v in values[:100]):
        raise UserError(f"the label column {printable(label)!r} of {printable(str(where))} does not "
                        f"hold one label per row: "
                        f"name another with --label-column")
    return None, values


def _table_samples(splits: dict, split: str, where: str, columns: tuple[str | None, str | None]):
    """This split's {class name: [RowRef]}, rows without a label left out."""
    datasets = _datasets()
    dataset = splits[split]
    image = _column(dataset.features, columns[0], (datasets.Image,), IMAGE_COLUMNS, "--image-column", where)
    label = _column(dataset.features, columns[1], (datasets.ClassLabel,), LABEL_COLUMNS, "--label-column",
                    where)
    if isinstance(dataset.features[image], datasets.Image):
        dataset = dataset.cast_column(image, datasets.Image(decode=False))
    table = Table(f"{where}:{split}", dataset.select_columns([image]), image)
    names, values = _classes_of(dataset, label, where)
    classes: dict[str, list[RowRef]] = {}
    for row, value in enumerate(values):
        if value is None or (not 0 <= value < len(names) if names is not None
                             else isinstance(value, int) and value < 0):
            continue  # unlabelled (ClassLabel -1, as test splits often are)
        classes.setdefault(names[value] if names is not None else str(value), []).append(
            RowRef(table.name, row, table))
    return classes


def load_hf(path: Path, val_split: float, seed: int, image_column: str | None = None,
            label_column: str | None = None) -> tuple[list[str], list, list]:
    """(labels, train samples, val samples) from a Hugging Face dataset: its train and validation
    splits when it has both, else its training split cut by the stratified, seeded split."""
    where = str(path)
    splits = open_splits_of(path)
    train_split = "train" if "train" in splits else next(iter(splits), None)
    if train_split is None:
        raise UserError(f"the Hugging Face dataset {printable(str(where))} has no split with rows")
    columns = (image_column, label_column)
    sets_column = _label_sets_column(splits[train_split].features, label_column)
    if sets_column is not None:  # several labels per image
        return load_label_sets(splits, train_split, where, (image_column, sets_column), val_split, seed)
    classes = _table_samples(splits, train_split, where, columns)
    if len(classes) < 2:
        raise UserError(f"the Hugging Face dataset {printable(str(where))} has {len(classes)} class(es) "
                        f"with images; "
                        f"training needs at least two")
    labels = sorted(classes)
    val_split_name = next((name for name in VAL_SPLITS if name in splits), None)
    if val_split_name is None:
        return labels, *stratified_split(classes, val_split, seed)
    val_classes = _table_samples(splits, val_split_name, where, columns)
    unknown = sorted(set(val_classes) - set(classes))
    if unknown:
        raise UserError(f"the {val_split_name} split of {printable(str(where))} has classes its "
                        f"training split lacks: "
                        f"{', '.join(map(printable, unknown[:10]))}")
    train = [(ref, i) for i, name in enumerate(labels) for ref in classes[name]]
    val = [(ref, labels.index(name)) for name in sorted(val_classes) for ref in val_classes[name]]
    return labels, train, val


def label_set_names(feature: object) -> list[str] | None:
    """The class names of a Sequence(ClassLabel) feature (several labels per row), else None."""
    datasets = _datasets()
    inner = getattr(feature, "feature", None)
    sequences = tuple(k for k in (getattr(datasets, "List", None), datasets.Sequence) if isinstance(k, type))
    several = isinstance(feature, sequences) and isinstance(inner, datasets.ClassLabel)
    return list(inner.names) if several else None


def _label_sets_column(features: dict, wanted: str | None) -> str | None:
    """The label column when it holds several labels per row: the one --label-column names, else (with no
    plain ClassLabel column) the first Sequence(ClassLabel) column. None: one label per row."""
    if wanted is not None:
        return wanted if wanted in features and label_set_names(features[wanted]) is not None else None
    if any(isinstance(feature, _datasets().ClassLabel) for feature in features.values()):
        return None
    return next((name for name, feature in features.items() if label_set_names(feature) is not None), None)


def _label_set_samples(splits: dict, split: str, where: str, columns: tuple[str | None, str]
                       ) -> tuple[list[str], dict]:
    """This split's class names and {RowRef: the names of its labels} (an empty list: no label)."""
    datasets = _datasets()
    dataset = splits[split]
    image = _column(dataset.features, columns[0], (datasets.Image,), IMAGE_COLUMNS, "--image-column", where)
    names = label_set_names(dataset.features.get(columns[1]))
    if names is None:
        raise UserError(f"the {split} split of {printable(where)} has no several-label column "
                        f"{printable(columns[1])!r} as its training split has")
    if isinstance(dataset.features[image], datasets.Image):
        dataset = dataset.cast_column(image, datasets.Image(decode=False))
    table = Table(f"{where}:{split}", dataset.select_columns([image]), image)
    rows = dataset.select_columns([columns[1]])[columns[1]]
    found = ({names[v] for v in values or [] if 0 <= v < len(names)} for values in rows)
    return names, {RowRef(table.name, row, table): sorted(these) for row, these in enumerate(found)}


def load_label_sets(splits: dict, train_split: str, where: str, columns: tuple[str | None, str],
                    val_split: float, seed: int) -> tuple[list[str], list, list]:
    """A Sequence(ClassLabel) column: (labels, train, val) as multi-hot samples (data/multilabel.py), split
    by the dataset's validation split, else by iterative stratification."""
    names, train = _label_set_samples(splits, train_split, where, columns)
    labels = sorted(names)
    if len(labels) < 2:
        raise UserError(f"the Hugging Face dataset {printable(where)} names {len(labels)} label(s); training "
                        f"needs at least two")
    hot = [(ref, multi_hot(found, labels)) for ref, found in train.items()]
    val_name = next((name for name in VAL_SPLITS if name in splits), None)
    if val_name is None:
        to_val = iterative_split([target for _, target in hot], val_split, seed)
        return labels, [s for s, v in zip(hot, to_val) if not v], [s for s, v in zip(hot, to_val) if v]
    val_names, val = _label_set_samples(splits, val_name, where, columns)
    if sorted(val_names) != labels:
        raise UserError(f"the {val_name} split of {printable(where)} names other labels than its training "
                        f"split")
    return labels, hot, [(ref, multi_hot(found, labels)) for ref, found in val.items()]
