"""How well and how fast does the deep audit (``classifier.py --check-data DIR --model M``) work?

    # 1. generated shapes with planted problems, and the ground truth beside them
    python benchmarks/audit.py plant --work /tmp/audit-bench
    # 2. a from-scratch training on those (noisy) labels (docs/audit.md: its figures had 16-px patches)
    python train.py --data /tmp/audit-bench/data --output-dir /tmp/audit-bench/run --model vit-tiny \
        --no-pretrained --image-size 64 --epochs 5 --batch-size 16 --no-rotate --no-color-jitter
    # 3. the audit with that checkpoint, scored against the ground truth
    python benchmarks/audit.py score --work /tmp/audit-bench --model /tmp/audit-bench/run/best
    # 4. time and peak memory (/usr/bin/time -v) on N generated images, a first and a cached run
    python benchmarks/audit.py scale --work /tmp/audit-scale --images 100000 --model /tmp/audit-bench/run/best
    # 5. perceptual hashes against thumbnails on the planted data; the neighbour search alone
    python benchmarks/audit.py hashes --work /tmp/audit-bench
    python benchmarks/audit.py search --images 100000

The planted problems: 5% of the training images moved into another class folder (flipped labels);
copies of training images put into val/ (the same class), each resized, re-encoded as a low-quality
JPEG or cropped; and a few images of another kind altogether (a blank frame, a text screenshot, a
photo-like gradient). Their paths, relative to the data folder, go to ``truth.json``.
"""
from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vitclassifier.data.synthetic import DEFAULT_CLASSES, generate_data  # noqa: E402

COPY_KINDS = ("resized", "reencoded", "cropped")


def copy_of(image: Image.Image, kind: str) -> Image.Image:
    """A near-duplicate of ``image``: smaller, recompressed, or cut at the edges and scaled back."""
    side = image.width
    if kind == "resized":
        return image.resize((side * 3 // 4, side * 3 // 4), Image.BICUBIC)
    if kind == "cropped":
        cut = max(1, side // 16)
        return image.crop((cut, cut, side - cut, side - cut)).resize((side, side), Image.BICUBIC)
    return image  # re-encoded: saved below at a low JPEG quality


def off_kind_images(side: int) -> dict[str, Image.Image]:
    """Images that are not shapes at all: what strays into real class folders."""
    blank = Image.new("RGB", (side, side), (128, 128, 128))
    text = Image.new("RGB", (side, side), (255, 255, 255))
    draw = ImageDraw.Draw(text)
    for row in range(4, side - 8, 10):
        draw.text((3, row), "File  Edit  View", fill=(0, 0, 0))
    gradient = Image.linear_gradient("L").resize((side, side)).convert("RGB")
    return {"blank": blank, "screenshot": text, "gradient": gradient}


def split_folders(flat: Path, data: Path, val_share: float, rng: random.Random) -> None:
    """Move the generated class folders into data/train and data/val (``val_share`` of each class)."""
    for folder in sorted(p for p in flat.iterdir() if p.is_dir()):
        files = sorted(folder.iterdir())
        rng.shuffle(files)
        n_val = round(len(files) * val_share)
        for split, part in (("val", files[:n_val]), ("train", files[n_val:])):
            (data / split / folder.name).mkdir(parents=True, exist_ok=True)
            for path in part:
                path.rename(data / split / folder.name / path.name)


def plant(work: Path, per_class: int, flip: float, copies: int, seed: int) -> dict:
    """Generate the shapes, split them, and plant flipped labels, near-duplicates and outliers."""
    rng = random.Random(seed)
    data, flat = work / "data", work / "generated"
    if data.exists():
        raise SystemExit(f"{data} exists; give a fresh --work folder")
    generate_data(flat, DEFAULT_CLASSES.split(","), per_class, 64, seed, work / "samples")
    split_folders(flat, data, 0.2, rng)
    classes = sorted(p.name for p in (data / "train").iterdir())
    train = sorted((data / "train").rglob("*.jpg"))
    chosen = rng.sample(train, round(len(train) * flip) + copies)
    flipped, originals = chosen[:len(chosen) - copies], chosen[len(chosen) - copies:]
    truth = {"flipped": [], "duplicates": [], "outliers": []}
    for path in flipped:
        wrong = rng.choice([name for name in classes if name != path.parent.name])
        target = data / "train" / wrong / f"flipped_{path.name}"
        path.rename(target)
        truth["flipped"].append(str(target.relative_to(data)))
    for i, path in enumerate(originals):
        kind = COPY_KINDS[i % len(COPY_KINDS)]
        target = data / "val" / path.parent.name / f"copy_{kind}_{path.stem}.jpg"
        with Image.open(path) as image:
            copy_of(image.convert("RGB"), kind).save(target, quality=35 if kind == "reencoded" else 90)
        truth["duplicates"].append([str(path.relative_to(data)), str(target.relative_to(data)), kind])
    for i, (kind, image) in enumerate(off_kind_images(64).items()):
        target = data / "train" / classes[i % len(classes)] / f"stray_{kind}.png"
        image.save(target)
        truth["outliers"].append(str(target.relative_to(data)))
    shutil.rmtree(flat)
    (work / "truth.json").write_text(json.dumps(truth, indent=2))
    print(f"{len(train)} training images; planted {len(flipped)} flipped labels, {copies} near-duplicate "
          f"copies in val/, {len(truth['outliers'])} off-kind images; ground truth: {work / 'truth.json'}")
    return truth


def audit(data: Path, model: str, out: Path, *options: str) -> dict:
    """One ``classifier.py --check-data DATA --model MODEL`` run under /usr/bin/time -v when there is
    one: its report.json, wall time and peak memory."""
    command = [sys.executable, str(ROOT / "classifier.py"), "--check-data", str(data), "--model", model,
               "--audit-out", str(out), *options]
    timed = ["/usr/bin/time", "-v", *command] if Path("/usr/bin/time").is_file() else command
    start = time.time()
    finished = subprocess.run(timed, capture_output=True, text=True)
    seconds = time.time() - start
    if finished.returncode not in (0, 1):
        raise SystemExit(finished.stderr[-3000:])
    peak = [line for line in finished.stderr.splitlines() if "Maximum resident set size" in line]
    report = json.loads((out / "report.json").read_text())
    return {"report": report, "seconds": round(seconds, 1),
            "peak_mib": round(int(peak[0].split()[-1]) / 1024) if peak else None}


def score(work: Path, model: str) -> dict:
    """The audit of the planted data, scored against truth.json."""
    truth = json.loads((work / "truth.json").read_text())
    run = audit(work / "data", model, work / "audit")
    deep = run["report"]["deep"]
    flagged = {row["path"] for row in deep["label_issues"]}
    flipped = set(truth["flipped"])
    pairs = {frozenset((row["path"], row["duplicate_of"])) for row in deep["near_duplicates"]}
    planted = {frozenset(pair[:2]): pair[2] for pair in truth["duplicates"]}
    found = {kind: sum(pair in pairs for pair, k in planted.items() if k == kind) for kind in COPY_KINDS}
    strays = [row["path"] for row in deep["outliers"]]
    figures = {
        "images": deep["images"], "seconds": run["seconds"], "peak_mib": run["peak_mib"],
        "label_issues": {"reported": len(flagged), "flipped": len(flipped), "true": len(flagged & flipped),
                         "precision": round(len(flagged & flipped) / max(1, len(flagged)), 3),
                         "recall": round(len(flagged & flipped) / len(flipped), 3)},
        "near_duplicates": {"planted": len(planted), "found": sum(found.values()), "found_by_kind": found,
                            "share_found": round(sum(found.values()) / len(planted), 3),
                            "false_pairs": len(pairs - set(planted)),
                            "leaks_flagged": sum(row["leak"] for row in deep["near_duplicates"] if
                                                 frozenset((row["path"], row["duplicate_of"])) in planted)},
        "outliers": {"planted": len(truth["outliers"]), "reported": len(strays),
                     "planted_found": sum(path in strays for path in truth["outliers"])},
    }
    print(json.dumps(figures, indent=2))
    return figures


def scale(work: Path, images: int, model: str) -> dict:
    """Time and peak memory of the audit on ``images`` generated images: a first run, then one that
    finds every embedding in the cache."""
    data = work / "data"
    if not data.is_dir():
        generate_data(data, DEFAULT_CLASSES.split(","), images // 5, 64, 0, work / "samples")
    first, second = audit(data, model, work / "audit"), audit(data, model, work / "audit")
    figures = {"images": first["report"]["deep"]["images"],
               "first_run": {"seconds": first["seconds"], "peak_mib": first["peak_mib"]},
               "cached_run": {"seconds": second["seconds"], "peak_mib": second["peak_mib"],
                              "from_cache": second["report"]["deep"]["from_cache"]}}
    print(json.dumps(figures, indent=2))
    return figures


def hashes(work: Path, bits: int, threshold: float) -> dict:
    """Why thumbnails and not perceptual hashes: on the planted data, how many planted copies each
    finds, and how many distinct images it pairs (phash: at most ``bits`` apart; thumbnails: cosine
    at least ``threshold``). Every pair is compared: fine for a few thousand images."""
    import imagehash
    import numpy as np

    from vitclassifier.deep_audit.embedding import thumbnail_vector, unit_rows
    truth, data = json.loads((work / "truth.json").read_text()), work / "data"
    paths = sorted(str(p.relative_to(data)) for p in data.rglob("*") if p.is_file())
    images = [Image.open(data / path).convert("RGB") for path in paths]
    phash = np.array([int(str(imagehash.phash(image)), 16) for image in images], dtype=np.uint64)
    unit = unit_rows(np.array([thumbnail_vector(image) for image in images]))
    where = {path: i for i, path in enumerate(paths)}
    planted = {frozenset((where[a], where[b])) for a, b, _ in truth["duplicates"]}
    figures = {}
    for name, close in (("phash", lambda i: np.bitwise_count(phash[i] ^ phash) <= bits),
                        ("thumbnail", lambda i: unit @ unit[i] >= threshold)):
        pairs = {frozenset((i, int(j))) for i in range(len(paths))
                 for j in np.flatnonzero(close(i)) if j != i}
        figures[name] = {"planted_found": len(pairs & planted), "planted": len(planted),
                         "false_pairs": len(pairs - planted)}
    print(json.dumps(figures, indent=2))
    return figures


def search(images: int, width: int, k: int) -> dict:
    """The neighbour search alone, torch's blocks against faiss, on random unit vectors."""
    import numpy as np

    from vitclassifier.deep_audit import neighbours
    from vitclassifier.deep_audit.embedding import unit_rows
    unit = unit_rows(np.random.default_rng(0).standard_normal((images, width)).astype(np.float32))
    figures = {}
    for name, run in (("torch", neighbours._torch_search), ("faiss", neighbours._faiss_search)):
        start = time.time()
        run(unit, k)
        figures[f"{name}_seconds"] = round(time.time() - start, 1)
    print(json.dumps(figures, indent=2))
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    steps = parser.add_subparsers(dest="step", required=True)
    planting = steps.add_parser("plant", help="generated shapes with planted problems")
    planting.add_argument("--work", type=Path, required=True)
    planting.add_argument("--per-class", type=int, default=1200)
    planting.add_argument("--flip", type=float, default=0.05, help="share of training labels flipped")
    planting.add_argument("--copies", type=int, default=60, help="near-duplicate copies put into val/")
    planting.add_argument("--seed", type=int, default=0)
    scoring = steps.add_parser("score", help="audit the planted data and score it against truth.json")
    scoring.add_argument("--work", type=Path, required=True)
    scoring.add_argument("--model", required=True)
    scaling = steps.add_parser("scale", help="time and peak memory on N generated images")
    scaling.add_argument("--work", type=Path, required=True)
    scaling.add_argument("--images", type=int, default=10_000)
    scaling.add_argument("--model", required=True)
    comparing = steps.add_parser("hashes", help="perceptual hashes against thumbnails on the planted data")
    comparing.add_argument("--work", type=Path, required=True)
    comparing.add_argument("--bits", type=int, default=4)
    comparing.add_argument("--threshold", type=float, default=0.98)
    searching = steps.add_parser("search", help="the neighbour search alone: torch against faiss")
    searching.add_argument("--images", type=int, default=100_000)
    searching.add_argument("--width", type=int, default=192)
    searching.add_argument("--k", type=int, default=10)
    args = parser.parse_args(argv)
    if args.step == "search":
        search(args.images, args.width, args.k)
    elif args.step == "hashes":
        hashes(args.work, args.bits, args.threshold)
    elif args.step == "plant":
        plant(args.work, args.per_class, args.flip, args.copies, args.seed)
    elif args.step == "score":
        score(args.work, args.model)
    else:
        scale(args.work, args.images, args.model)
    return 0


if __name__ == "__main__":
    sys.exit(main())
