"""``classifier.py --check-data`` on tar shards: the folder's audit (data/audit.py), streamed.

Every shard is read once, in order, and every image decoded as training decodes it; only counts, the
unreadable entries and a few small-image examples are kept, so memory stays flat however many shards
there are. The report has the folder audit's form (the same text, JSON and exit codes), with three
differences: exact duplicates are not looked for (that needs a hash of every image held at once), a
shard that ends before the count its index gives is listed as damaged (and says so in the
recommendations), and the samples no command reads (no image, no label, a label the index lacks) are
counted and the first few named under ``left_out_samples``, as the warning names them.
"""
from __future__ import annotations

import io
from collections import defaultdict

from PIL import Image
from tqdm import tqdm

from vitclassifier.data.audit import EXAMPLES, class_summary, verdict
from vitclassifier.data.folders import utf8_safe
from vitclassifier.data.images import DECODE_ERRORS, load_image
from vitclassifier.data.shards import SHOWN, ShardSet, named_left_out, read_shard
from vitclassifier.urls import redact


def _roles(train: ShardSet, val: ShardSet) -> dict[str, list[tuple[str, ShardSet]]]:
    """Each shard with the roles that read from it: one each when --to-shards wrote them, both when
    the validation samples are held out of the same shards by the hash of their keys."""
    roles = defaultdict(list)
    for split, part in (("train", train), ("val", val)):
        for shard in part.shards:
            roles[shard].append((split, part))
    return roles


def _check_image(image: bytes, image_size: int | None) -> tuple[int, int]:
    """Decode as training does (load_image's checks); the stored size, read from the header."""
    load_image(image, image_size)
    with Image.open(io.BytesIO(image)) as header:
        return header.size


def _audit_stream(labels: list[str], train: ShardSet, val: ShardSet, image_size: int | None) -> dict:
    """Counts, unreadable entries, small-image examples and short shards, in one pass over the shards."""
    classes = {name: {"train": 0, "val": 0, "total": 0, "unreadable": 0, "small": 0} for name in labels}
    unreadable, small, damaged, left_out = [], defaultdict(list), [], {"count": 0, "first": []}
    expected = {shard: count for part in (train, val) if part.indexed and part.holdout is None
                for shard, count in zip(part.shards, part.counts)}
    bar = tqdm(total=len(train) + len(val), desc="decoding", unit="img", disable=None)
    for shard, roles in _roles(train, val).items():
        read = 0
        for key, image, sample in read_shard(shard):  # a truncated shard: a warning, then its end
            split, part = next(((s, p) for s, p in roles if p.keeps(key)), (None, None))
            name = part.label(sample) if part else None
            if image is None or name not in classes:  # what training skips too
                left_out["count"] += 1
                if len(left_out["first"]) < SHOWN:
                    left_out["first"].append(utf8_safe(named_left_out(shard, key, image, name, labels)))
                continue
            read += 1
            bar.update()
            counts = classes[name]
            counts[split] += 1
            counts["total"] += 1
            where = utf8_safe(f"{redact(shard)}/{key}")  # a URL's password or token never in the report
            try:
                width, height = _check_image(image, image_size)
            except DECODE_ERRORS as error:
                counts["unreadable"] += 1
                unreadable.append({"path": where, "class": name, "split": split,
                                   "reason": utf8_safe(f"{type(error).__name__}: {error}")})
                continue
            if image_size and min(width, height) < image_size:
                counts["small"] += 1
                if len(small[name]) < EXAMPLES:
                    small[name].append({"path": where, "width": width, "height": height})
        if read < expected.get(shard, 0):
            damaged.append({"shard": utf8_safe(redact(shard)), "expected": expected[shard], "read": read})
    bar.close()
    small = {name: small[name] for name in labels if name in small}  # in class order, as the folder audit
    return {"classes": classes, "unreadable": unreadable, "small_examples": small, "damaged": damaged,
            "left_out": left_out}


def audit_shards(labels: list[str], train: ShardSet, val: ShardSet, image_size: int | None = 224) -> dict:
    """The folder audit's report (data/audit.audit_dataset) for shards, every image decoded."""
    found = _audit_stream(labels, train, val, image_size)
    report = {
        **class_summary(found["classes"], True, image_size),
        "duplicates": {"groups": [], "redundant_files": 0, "cross_split_groups": 0, "cross_class_groups": 0,
                       "checked": False},
        "unreadable": found["unreadable"],
        "small_examples": found["small_examples"],
        "damaged_shards": found["damaged"],
        "left_out_samples": found["left_out"],
    }
    report["fatal"], report["recommendations"] = verdict(report)
    if found["damaged"]:
        lost = sum(d["expected"] - d["read"] for d in found["damaged"])
        report["recommendations"].insert(0, (
            f"{len(found['damaged'])} shard(s) end early, {lost} image(s) short of their index (first: "
            f"{found['damaged'][0]['shard']}): training skips the rest of each; write them again "
            f"(--to-shards) or restore them"))
    return report
