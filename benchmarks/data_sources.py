"""Streaming from tar shards against reading the class folder, on the same images.

    python benchmarks/data_sources.py --images 100000 --work /tmp/data-sources-bench

Writes ``--images`` small PNGs (``--size`` px, 10 classes) into WORK/folder, turns them into shards
with ``classifier.py --to-shards``, then, each in a fresh process, reads one epoch of the training
images the way training's loaders do (decode + resize to same-size uint8 squares, no decode cache) from
the folder and from the shards, with 0 and 2 DataLoader workers. Prints images/s and the peak
resident memory (the main process and its workers, each counted at its own peak).
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def generate(folder: Path, count: int, size: int) -> None:
    """``count`` PNGs of 4-px random blocks in 10 classes. Creating the files is most of the time (not
    the encoding), so threads write them while the next ones are encoded."""
    import io
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(0)
    targets = [folder / f"class_{label}" for label in range(10)]
    for target in targets:
        target.mkdir(parents=True, exist_ok=True)

    def write(number: int, encoded: bytes) -> None:
        (targets[number % 10] / f"{number:07d}.png").write_bytes(encoded)

    with ThreadPoolExecutor(8) as pool:
        for first in range(0, count, 10_000):  # the pixels of 10,000 images drawn at a time
            shape = (min(10_000, count - first), size // 4, size // 4, 3)
            blocks = rng.integers(0, 256, shape, dtype=np.uint8).repeat(4, 1).repeat(4, 2)
            written = []
            for number, pixels in enumerate(blocks, first):
                encoded = io.BytesIO()
                Image.fromarray(pixels).save(encoded, format="PNG")
                written.append(pool.submit(write, number, encoded.getvalue()))
            for done in written:
                done.result()  # a write that failed fails the benchmark


def read_epoch(form: str, work: Path, workers: int, size: int) -> dict:
    """One pass over the training images as training's loaders read them; in this process."""
    from torch.utils.data import DataLoader

    from vitclassifier.data.augment import train_decode
    from vitclassifier.data.dataset import collate_skipping_bad
    from vitclassifier.data.sources import open_source
    from vitclassifier.data.transforms import Preprocessing
    prep = Preprocessing(size)
    decode = train_decode(prep, True, False)
    start = time.perf_counter()
    source = open_source(work / form)
    if source.streamed:
        dataset, options = source.training_stream(decode, prep.resize_size, 64, 64, lambda e: e), {}
    else:
        dataset, options = source.training_data(decode, prep.resize_size), {"shuffle": True}
    loader = DataLoader(dataset, batch_size=64, num_workers=workers, collate_fn=collate_skipping_bad,
                        **options)
    images = sum(len(batch[1]) for batch in loader if batch[1] is not None)
    seconds = time.perf_counter() - start
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"form": form, "workers": workers, "images": images, "seconds": round(seconds, 1),
            "images_per_s": round(images / seconds), "peak_rss_mib": round(own),
            "largest_worker_rss_mib": round(children)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--work", type=Path, default=Path("/tmp/data-sources-bench"))
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--child", nargs=2, metavar=("FORM", "WORKERS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(read_epoch(args.child[0], args.work, int(args.child[1]), args.size)))
        return
    if not (args.work / "folder").is_dir():
        started = time.perf_counter()
        generate(args.work / "folder", args.images, args.size)
        print(f"generated {args.images} images in {time.perf_counter() - started:.0f}s")
    if not (args.work / "shards").is_dir():
        started = time.perf_counter()
        subprocess.run([sys.executable, str(ROOT / "classifier.py"), "--to-shards", str(args.work / "folder"),
                        str(args.work / "shards"), "--split-seed", "42"], check=True)
        print(f"wrote the shards in {time.perf_counter() - started:.0f}s")
    for workers in args.workers:
        for form in ("folder", "shards"):
            command = [sys.executable, __file__, "--work", str(args.work), "--size", str(args.size),
                       "--child", form, str(workers)]
            result = subprocess.run(command, capture_output=True, text=True, check=True)
            print(result.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
