"""Prediction over many images: predict.py --out (rows streamed into a JSONL file) against today's
path (predict.py --json: every result kept in memory, the whole table printed, the JSON written at
the end), and a run killed half way then continued with --resume.

    python benchmarks/predict_scale.py                          # 2,000 and 10,000 images
    python benchmarks/predict_scale.py --images 10000 100000    # the issue's sizes (100k: ~1 h on 2 cores)

Every run is a fresh process, as users run predict.py (the fastest of --repeats runs counts), over
the same N images (32 px, links to a few dozen generated pictures, each decoded every time) with a
tiny ViT at 32 px, so that decoding, batching and writing weigh as much as they can against the
model. Printed per N and path: wall
time, images/s end to end, images/s of the prediction alone (the difference between the two sizes
takes the start-up out) and the peak resident memory of the process. Then: killed with SIGKILL
once half the rows are in the journal, --resume, and the output compared byte for byte with the
uninterrupted run's. No figure is asserted: the script prints them (and --json writes them).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DISTINCT = 64  # different pictures; the rest are hard links to them
SIZE = 32
# runs predict.py's main as `python predict.py ...` would, then prints the process's peak memory
MEASURED = ("import resource, runpy, sys\nsys.argv = sys.argv[1:]\ntry:\n"
            "    runpy.run_path(sys.argv[0], run_name='__main__')\nfinally:\n"
            "    print('PEAK_KIB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n")


def tiny_model(folder: Path) -> Path:
    """A 2-block ViT at 32 px with 10 classes, seeded, saved as a checkpoint directory."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor
    torch.manual_seed(0)
    labels = [f"class_{i}" for i in range(10)]
    config = ViTConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
                       image_size=SIZE, patch_size=8, num_labels=len(labels),
                       id2label=dict(enumerate(labels)), label2id={name: i for i, name in enumerate(labels)})
    ViTForImageClassification(config).save_pretrained(folder)
    ViTImageProcessor(size={"height": SIZE, "width": SIZE}, image_mean=[0.5] * 3,
                      image_std=[0.5] * 3).save_pretrained(folder)
    return folder


def image_folder(folder: Path, count: int) -> Path:
    """``count`` JPEGs, 100 to a sub-folder, linked to DISTINCT generated ones."""
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(0)
    sources = folder / "distinct"
    sources.mkdir(parents=True, exist_ok=True)
    for i in range(DISTINCT):
        pixels = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(sources / f"{i}.jpg", quality=90)
    images = folder / f"images-{count}"
    for i in range(count):
        sub = images / f"{i // 100:05d}"
        sub.mkdir(parents=True, exist_ok=True)
        os.link(sources / f"{i % DISTINCT}.jpg", sub / f"{i:07d}.jpg")
    return images


def run_predict(arguments: list[str]) -> dict:
    """predict.py with ``arguments`` in a process of its own: wall seconds and peak memory (MiB)."""
    start = time.perf_counter()
    process = subprocess.run([sys.executable, "-c", MEASURED, str(ROOT / "predict.py"), *arguments],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - start
    peak = [line for line in process.stderr.splitlines() if line.startswith("PEAK_KIB")]
    if process.returncode != 0 or not peak:
        sys.exit(f"predict.py {' '.join(arguments)} failed:\n{process.stderr[-2000:]}")
    return {"seconds": seconds, "peak_mib": int(peak[-1].split()[1]) / 1024}


def fastest(arguments: list[str], repeats: int) -> dict:
    """The fastest of ``repeats`` runs (this machine is shared: the others waited on other work), with
    the highest peak memory seen; the outputs of the runs are written over by --overwrite."""
    runs = [run_predict(arguments + (["--overwrite"] if "--out" in arguments and turn else []))
            for turn in range(repeats)]
    return {"seconds": min(run["seconds"] for run in runs), "peak_mib": max(run["peak_mib"] for run in runs)}


def paths(model: Path, images: Path, batch_size: int, work: Path) -> dict[str, list[str]]:
    common = ["--model", str(model), "--image", str(images), "--batch-size", str(batch_size),
              "--device", "cpu"]
    return {"today (--json)": [*common, "--json", str(work / f"{images.name}.json")],
            "--out .jsonl": [*common, "--out", str(work / f"{images.name}.jsonl")]}


def kill_half_way(arguments: list[str], out: Path, count: int) -> int:
    """Start predict.py, SIGKILL it once half the rows are in its journal; the rows it kept."""
    journal = out.with_name(f"{out.name}.part-0-of-1")
    process = subprocess.Popen([sys.executable, str(ROOT / "predict.py"), *arguments],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while process.poll() is None:
            if journal.exists() and journal.read_bytes().count(b"\n") - 1 >= count // 2:
                process.send_signal(signal.SIGKILL)
                break
            time.sleep(0.2)
    finally:
        process.wait()
    if process.returncode != -signal.SIGKILL:
        sys.exit(f"the run ended ({process.returncode}) before it could be killed half way")
    return journal.read_bytes().count(b"\n") - 1


def resume_check(model: Path, images: Path, batch_size: int, work: Path, count: int) -> dict:
    """Kill half way, --resume, compare with the uninterrupted run's file."""
    whole = work / f"{images.name}.jsonl"
    out = work / f"{images.name}-resumed.jsonl"
    arguments = paths(model, images, batch_size, work)["--out .jsonl"][:-1] + [str(out)]
    kept = kill_half_way(arguments, out, count)
    resumed = run_predict([*arguments, "--resume"])
    same = out.read_bytes() == whole.read_bytes()
    print(f"N={count}: killed with {kept} rows written; --resume took {resumed['seconds']:.1f}s; "
          f"the output is {'identical to' if same else 'DIFFERENT from'} the uninterrupted run's "
          f"({whole.stat().st_size} bytes)")
    return {"rows_kept_at_kill": kept, "resume_seconds": resumed["seconds"], "identical": same}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, nargs="+", default=[2000, 10000], help="the sizes N")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2, help="runs per size and path: the fastest counts")
    parser.add_argument("--work", type=Path, help="folder for the images and outputs (default: a temporary "
                                                  "one)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        work = Path(tmp)
        model = tiny_model(work / "model")
        figures: dict = {"machine": f"{os.cpu_count()} CPU cores", "runs": {}}
        for count in sorted(args.images):
            images = image_folder(work, count)
            for name, arguments in paths(model, images, args.batch_size, work).items():
                result = fastest(arguments, args.repeats)
                figures["runs"].setdefault(name, {})[count] = result
                print(f"N={count:>7} {name:<15} {result['seconds']:7.1f}s  {count / result['seconds']:7.1f} "
                      f"images/s end to end  peak {result['peak_mib']:6.0f} MiB", flush=True)
        sizes = sorted(args.images)
        if len(sizes) > 1:
            for name, runs in figures["runs"].items():
                low, high = runs[sizes[0]], runs[sizes[-1]]
                rate = (sizes[-1] - sizes[0]) / (high["seconds"] - low["seconds"])
                growth = high["peak_mib"] / low["peak_mib"] - 1
                figures.setdefault("steady", {})[name] = {"images_per_s": rate, "peak_growth": growth}
                print(f"{name:<15} {rate:7.1f} images/s without start-up; peak memory {growth * 100:+.1f}% "
                      f"from {sizes[0]} to {sizes[-1]} images")
        figures["resume"] = resume_check(model, images, args.batch_size, work, sizes[-1])
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0 if figures["resume"]["identical"] else 1


if __name__ == "__main__":
    sys.exit(main())
