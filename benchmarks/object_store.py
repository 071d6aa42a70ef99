"""One epoch over tar shards from a local S3-compatible server against the same shards on disk.

    python benchmarks/object_store.py --images 20000 --work /tmp/object-store-bench

Writes ``--images`` PNGs (``--size`` px, 10 classes; benchmarks/data_sources.generate) and their shards
(``classifier.py --to-shards``), starts moto's S3 server (``moto[server]``) in a process of its own on a
free port, uploads the shards to it, then, each in a fresh process, reads one epoch of the training
images as training's loaders do (decode + resize, data/augment.train_decode) from disk and from
``s3://``, with 0 and 2 DataLoader workers. Prints images/s and the peak resident memory (the main
process and its largest worker). The server runs on the same machine: the figures measure our
reader and s3fs, not a network.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
BUCKET = "s3://bench/shards"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
               "AWS_DEFAULT_REGION": "us-east-1"}


def read_epoch(data: str, workers: int, size: int) -> dict:
    """One pass over the training images of ``data`` as training's loaders read them; in this process."""
    from torch.utils.data import DataLoader

    from vitclassifier.data.augment import train_decode
    from vitclassifier.data.dataset import collate_skipping_bad
    from vitclassifier.data.sources import open_source
    from vitclassifier.data.transforms import Preprocessing
    prep = Preprocessing(size)
    start = time.perf_counter()
    stream = open_source(data).training_stream(train_decode(prep, True, False), prep.resize_size, 64, 64,
                                               lambda epoch: epoch)
    loader = DataLoader(stream, batch_size=64, num_workers=workers, collate_fn=collate_skipping_bad)
    images = sum(len(batch[1]) for batch in loader if batch[1] is not None)
    seconds = time.perf_counter() - start
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"from": data.split(":")[0] if "://" in data else "disk", "workers": workers, "images": images,
            "seconds": round(seconds, 1), "images_per_s": round(images / seconds),
            "peak_rss_mib": round(own), "largest_worker_rss_mib": round(children)}


def start_server() -> tuple[subprocess.Popen, str]:
    """moto's S3 server in a process of its own (so it takes no time from the reader's process)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return server, f"http://127.0.0.1:{port}"
        time.sleep(0.2)
    server.kill()
    raise SystemExit("moto's S3 server did not start (pip install 'moto[server]')")


def prepare(work: Path, images: int, size: int) -> None:
    """The images and their shards, once (kept in WORK for the next run)."""
    from data_sources import generate
    if not (work / "folder").is_dir():
        generate(work / "folder", images, size)
    if not (work / "shards").is_dir():
        subprocess.run([sys.executable, str(ROOT / "classifier.py"), "--to-shards", str(work / "folder"),
                        str(work / "shards"), "--split-seed", "42"], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--work", type=Path, default=Path("/tmp/object-store-bench"))
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--child", nargs=2, metavar=("DATA", "WORKERS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(read_epoch(args.child[0], int(args.child[1]), args.size)))
        return
    prepare(args.work, args.images, args.size)
    last = len(json.loads((args.work / "shards" / "index.json").read_text())["train"]) - 1
    pattern = f"train-{{000000..{last:06d}}}.tar"
    server, endpoint = start_server()
    env = {**os.environ, **CREDENTIALS, "AWS_ENDPOINT_URL": endpoint}
    try:
        subprocess.run([sys.executable, "-c", "import sys, fsspec; fs = fsspec.filesystem('s3'); "
                        "fs.mkdir('bench'); fs.put(sys.argv[1] + '/', 'bench/shards/', recursive=True)",
                        str(args.work / "shards")], env=env, check=True)
        for workers in args.workers:
            for data in (f"{args.work / 'shards'}/{pattern}", f"{BUCKET}/{pattern}"):
                command = [sys.executable, __file__, "--size", str(args.size), "--child", data, str(workers)]
                result = subprocess.run(command, capture_output=True, text=True, env=env)
                if result.returncode != 0:
                    raise SystemExit(result.stderr[-2000:])
                print(result.stdout.strip().splitlines()[-1])
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
