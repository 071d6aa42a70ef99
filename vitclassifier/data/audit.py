"""Data set audit: what would spoil a training run, found before it starts.

``python classifier.py --check-data DIR`` runs the full audit (every file decoded, as training
will decode it). train.py runs the quick one (``decode=False``: sizes and hashes only, no image
opened) at start-up and prints ``format_report(report, brief=True)``.

The report is plain data (string paths, numbers, lists), so it can be written as JSON as it is.
"""
from __future__ import annotations

import hashlib
import io
import os
import stat
from collections import defaultdict
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from vitclassifier.data.folders import utf8_safe
from vitclassifier.data.images import DECODE_ERRORS, load_image, open_regular
from vitclassifier.text import printable

IMBALANCE_THRESHOLD = 3.0  # largest / smallest class from which class weighting is worth it
HEAD_BYTES = 64 * 1024  # same-size files are compared on this much first, before a full read
CHUNK_BYTES = 1 << 20  # files are hashed this much at a time: memory stays flat for any file size
EXAMPLES = 3  # example paths of small images shown per class
LISTED = 20  # longest list the text report prints; the JSON report has every entry
NAMED_GROUPS = 3  # duplicate groups named in the brief report at the start of training


# ---------------------------------------------------------------------------
# Exact duplicates
# ---------------------------------------------------------------------------
def _digest(path: Path, limit: int | None) -> bytes:
    """Hash of the first ``limit`` bytes of a regular file (None: all of it), read in chunks."""
    digest, left = hashlib.blake2b(), limit
    with open_regular(path) as file:  # a pipe or a device raises instead of blocking or never ending
        while left is None or left > 0:
            chunk = file.read(CHUNK_BYTES if left is None else min(CHUNK_BYTES, left))
            if not chunk:
                break
            digest.update(chunk)
            left = None if left is None else left - len(chunk)
    return digest.digest()


def _group_by_digest(paths: list[Path], limit: int | None) -> list[list[Path]]:
    """Split ``paths`` by a hash of their first ``limit`` bytes (None: all); keep groups of 2+."""
    by_digest = defaultdict(list)
    for path in paths:
        try:
            by_digest[_digest(path, limit)].append(path)
        except OSError:
            continue  # unreadable: decoding reports it; it cannot be anyone's duplicate
    return [group for group in by_digest.values() if len(group) > 1]


def find_duplicates(paths: list[Path]) -> list[list[Path]]:
    """Groups of byte-identical files, in the order of ``paths``.

    Only files whose size another file shares are read at all, and only those whose first
    64 KiB also agree are read in full (1 MiB at a time), so 100k photos cost little more than 100k
    stats. Only regular files take part: two links to /dev/zero are not duplicates, nor are pipes."""
    by_size = defaultdict(list)
    for path in paths:
        try:
            status = os.stat(path)
        except (OSError, TypeError):  # TypeError: not a file but a dataset row (data/hfdata.RowRef)
            continue
        if stat.S_ISREG(status.st_mode):
            by_size[status.st_size].append(path)
    groups = [group for group in by_size.values() if len(group) > 1]
    for limit in (HEAD_BYTES, None):
        groups = [same for group in groups for same in _group_by_digest(group, limit)]
    return groups


def _duplicates(samples: list[tuple[Path, str, str]]) -> dict:
    """Duplicate groups with their classes and splits, and how many cross a split or a class."""
    where = {path: (name, split) for path, name, split in samples}
    groups = []
    for paths in find_duplicates([path for path, _, _ in samples]):
        files = [{"path": utf8_safe(path), "class": where[path][0], "split": where[path][1]}
                 for path in paths]
        groups.append({"files": files,
                       "cross_split": len({f["split"] for f in files}) > 1,
                       "cross_class": len({f["class"] for f in files}) > 1})
    return {"groups": groups,
            "redundant_files": sum(len(group["files"]) - 1 for group in groups),
            "cross_split_groups": sum(group["cross_split"] for group in groups),
            "cross_class_groups": sum(group["cross_class"] for group in groups)}


# ---------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------
def _decode_all(samples: list[tuple[Path, str, str]], classes: dict, image_size: int | None):
    """Decode every file as training does; count unreadable and small files into ``classes``.

    Returns (unreadable files with reasons, up to EXAMPLES small images per class)."""
    unreadable, small_examples = [], defaultdict(list)
    for counts in classes.values():
        counts.update(unreadable=0, small=0)
    for path, name, split in tqdm(samples, desc="decoding", unit="img", disable=None):
        try:
            load_image(path, image_size)  # first: it opens regular files only, the header open below any
            with Image.open(path if isinstance(path, Path) else io.BytesIO(path.image_bytes())) as header:
                width, height = header.size  # the stored size: load_image may decode big ones scaled down
        except DECODE_ERRORS as error:
            classes[name]["unreadable"] += 1
            unreadable.append({"path": utf8_safe(path), "class": name, "split": split,
                               "reason": utf8_safe(f"{type(error).__name__}: {error}")})
            continue
        if image_size and min(width, height) < image_size:
            classes[name]["small"] += 1
            if len(small_examples[name]) < EXAMPLES:
                small_examples[name].append({"path": utf8_safe(path), "width": width, "height": height})
    return unreadable, dict(small_examples)


# ---------------------------------------------------------------------------
# The audit
# ---------------------------------------------------------------------------
def verdict(report: dict) -> tuple[list[str], list[str]]:
    """(reasons training is impossible, recommendations) drawn from the finished counts (also those of
    the streamed shard audit, data/shardaudit.py)."""
    fatal, advice = [], []
    usable = 0
    for name, counts in report["classes"].items():
        readable = counts["total"] - counts.get("unreadable", 0)
        if not counts["total"]:
            fatal.append(f"class {name!r} has no images")
        elif not readable:
            fatal.append(f"class {name!r}: all {counts['total']} files are unreadable")
        usable += readable > 0
    if usable < 2:
        fatal.append(f"{usable} class(es) with usable images; training needs at least 2")
    ratio = report["imbalance_ratio"]
    if ratio is not None and ratio >= IMBALANCE_THRESHOLD:
        advice.append(f"classes are imbalanced ({ratio:.1f}:1): train with --class-weights auto "
                      f"or --balanced-sampler")
    duplicates = report["duplicates"]
    if duplicates["cross_split_groups"]:
        advice.append("delete one copy of each image in both train and val: the model has seen "
                      "those validation images, so validation accuracy is too high")
    if duplicates["cross_class_groups"]:
        advice.append("images filed under two classes teach contradictory labels: keep each in one class")
    if report["unreadable"]:
        advice.append("delete or re-export the unreadable files (training skips them)")
    small = sum(counts.get("small", 0) for counts in report["classes"].values())
    if small:
        advice.append(f"{small} image(s) are smaller than the {report['image_size']} px model input "
                      f"and will be upscaled (blurred): replace them with larger ones if you can")
    return fatal, advice


def class_summary(classes: dict[str, dict[str, int]], decoded: bool, image_size: int | None) -> dict:
    """The report's counts part, shared by every form of data: per class, totals and imbalance."""
    sizes = {name: counts["total"] for name, counts in classes.items()}
    largest, smallest = max(sizes, key=sizes.get), min(sizes, key=sizes.get)
    return {
        "decoded": decoded,
        "image_size": image_size,
        "classes": classes,
        "totals": {key: sum(counts[key] for counts in classes.values()) for key in ("train", "val", "total")},
        "largest_class": largest,
        "smallest_class": smallest,
        "imbalance_ratio": round(sizes[largest] / sizes[smallest], 2) if sizes[smallest] else None,
    }


def audit_dataset(labels: list[str], train: list[tuple[Path, int]], val: list[tuple[Path, int]],
                  image_size: int | None = 224, decode: bool = True) -> dict:
    """Audit a split as data.folders.load_splits returns it.

    Always: per-class counts, the imbalance ratio, exact duplicates (by size, then hash).
    With ``decode``: also every file decoded, for unreadable files and images whose shorter side
    is below ``image_size`` (None: no size check). Without it no image is opened."""
    samples = [(Path(path) if isinstance(path, (str, Path)) else path, labels[label], split)  # or a RowRef
               for split, items in (("train", train), ("val", val)) for path, label in items]
    classes = {name: {"train": 0, "val": 0, "total": 0} for name in labels}
    for _, name, split in samples:
        classes[name][split] += 1
        classes[name]["total"] += 1
    report = {
        **class_summary(classes, decode, image_size),
        "duplicates": {**_duplicates(samples),  # files only: rows of a Hugging Face dataset are not
                       "checked": all(isinstance(path, Path) for path, _, _ in samples)},
        "unreadable": [],
        "small_examples": {},
    }
    if decode:
        report["unreadable"], report["small_examples"] = _decode_all(samples, classes, image_size)
    report["fatal"], report["recommendations"] = verdict(report)
    return report


# ---------------------------------------------------------------------------
# Text report
# ---------------------------------------------------------------------------
def _summary(report: dict) -> str:
    totals = report["totals"]
    return (f"Data: {len(report['classes'])} classes, {totals['train']} train + {totals['val']} val "
            f"= {totals['total']} images")


def _imbalance(report: dict) -> str:
    classes, largest, smallest = report["classes"], report["largest_class"], report["smallest_class"]
    ratio = report["imbalance_ratio"]
    return (f"Imbalance: largest / smallest class = {'n/a' if ratio is None else f'{ratio:.1f}'} "
            f"(largest: {largest} {classes[largest]['total']}, "
            f"smallest: {smallest} {classes[smallest]['total']})")


def _brief(report: dict) -> list[str]:
    """Only what needs attention, in at most about five lines, for the start of training
    (which prints its own counts): imbalance, leaked or contradictory duplicates, fatal problems."""
    lines = []
    ratio = report["imbalance_ratio"]
    if ratio is not None and ratio >= IMBALANCE_THRESHOLD:
        lines.append(_imbalance(report) + "; consider --class-weights auto or --balanced-sampler")
    duplicates = report["duplicates"]
    if duplicates["cross_split_groups"]:
        lines.append(
            f"Warning: {duplicates['cross_split_groups']} image(s) are in both train and val, "
            f"which inflates validation accuracy: {_named(duplicates['groups'], 'cross_split')}"
        )
    if duplicates["cross_class_groups"]:
        lines.append(f"Warning: {duplicates['cross_class_groups']} image(s) are filed under two classes: "
                     f"{_named(duplicates['groups'], 'cross_class')}")
    if report["fatal"]:
        lines.append("Fatal: " + "; ".join(report["fatal"]))
    return lines


def _named(groups: list[dict], kind: str) -> str:
    """The first NAMED_GROUPS duplicate groups of ``kind`` by their files, then how many more."""
    chosen = [group for group in groups if group[kind]]
    named = "; ".join(" = ".join(f["path"] for f in group["files"]) for group in chosen[:NAMED_GROUPS])
    more = len(chosen) - NAMED_GROUPS
    tail = f"; and {more} more" if more > 0 else ""
    return f"{named}{tail} (python classifier.py --check-data lists them)"


def _table(report: dict) -> list[str]:
    """Per-class counts, aligned, with a totals row."""
    columns = ["train", "val", "total"]
    if report["decoded"]:
        columns += ["unreadable", "small"]
    rows = [[name] + [str(counts[c]) for c in columns] for name, counts in report["classes"].items()]
    rows.append(["total"] + [str(sum(counts[c] for counts in report["classes"].values())) for c in columns])
    header = ["class"] + columns
    widths = [max(len(row[i]) for row in [header] + rows) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join([cells[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(cells[1:], widths[1:])])

    return [line(header)] + [line(row) for row in rows]


def _per_label(report: dict) -> str:
    counts = report["multi_label"]
    return f"{len(counts['labels'])} labels, {counts['no_label']} image(s) with no label"


def _per_label_table(report: dict) -> list[str]:
    """Multi-label data: the images carrying each label, in train and val."""
    counts = report["multi_label"]["labels"]
    width = max(len("label"), *(len(name) for name in counts))
    return [f"{'label'.ljust(width)}  train    val", *(f"{name.ljust(width)}  {c['train']:>5}  {c['val']:>5}"
                                                     for name, c in counts.items())]


def _listed(items: list[str]) -> list[str]:
    """The first LISTED items, indented, and a count of the rest."""
    more = (
        [f"  ... and {len(items) - LISTED} more (the --json report lists all)"] if len(items) > LISTED else []
    )
    return [f"  {item}" for item in items[:LISTED]] + more


def _full(report: dict) -> list[str]:
    lines = [_summary(report) + ("" if report["decoded"] else " (files not decoded)")]
    if report.get("data"):
        lines.append(f"Folder: {report['data']}; split: {report['split']}")
    if "multi_label" in report:  # several labels per image: the label sets are counted as classes
        lines[0] = _summary(report).replace("classes", "label sets") + f", {_per_label(report)}"
    lines += ["", *_table(report), ""]
    lines += _per_label_table(report) if "multi_label" in report else [_imbalance(report)]
    if report["unreadable"]:
        lines += [
            f"Unreadable files ({len(report['unreadable'])}):",
            *_listed([f"{bad['path']}: {bad['reason']}" for bad in report["unreadable"]]),
        ]
    if report["small_examples"]:
        lines.append(f"Images smaller than {report['image_size']} px (shorter side), per class:")
        for name, examples in report["small_examples"].items():
            shown = ", ".join(f"{e['path']} ({e['width']}x{e['height']})" for e in examples)
            lines.append(f"  {name}: {report['classes'][name]['small']}, e.g. {shown}")
    duplicates = report["duplicates"]
    if duplicates["groups"]:
        lines.append(
            f"Exact duplicates: {len(duplicates['groups'])} group(s), "
            f"{duplicates['redundant_files']} redundant file(s); "
            f"{duplicates['cross_split_groups']} across train/val, "
            f"{duplicates['cross_class_groups']} across classes"
        )
        # The harmful groups first: they change the numbers, plain repeats only waste time.
        ranked = sorted(duplicates["groups"], key=lambda g: not (g["cross_split"] or g["cross_class"]))
        lines += _listed(
            [
                " = ".join(f"{f['path']} ({f['class']}, {f['split']})" for f in group["files"])
                for group in ranked
            ]
        )
    elif duplicates.get("checked") is False:
        lines.append("Exact duplicates: not looked for (streamed shards and dataset rows are not files)")
    else:
        lines.append("Exact duplicates: none")
    if report["recommendations"]:
        lines += ["Recommendations:", *(f"  - {advice}" for advice in report["recommendations"])]
    if report["fatal"]:
        lines += ["Training is impossible:", *(f"  - {reason}" for reason in report["fatal"])]
    else:
        lines.append(
            "Training is possible" + (" (see the recommendations)" if report["recommendations"] else "")
        )
    return lines


def format_report(report: dict, brief: bool = False) -> str:
    """The report as text: the full tables, or (``brief``) a few lines for the start of training.
    Control characters in class and file names are escaped (text.printable): one entry, one line."""
    return "\n".join(printable(line) for line in (_brief(report) if brief else _full(report)))
