"""Speed: our training and prediction against transformers.Trainer and transformers.pipeline.

    python benchmarks/speed.py                        # vit-small @224: about 8 minutes on 2 CPU cores
    python benchmarks/speed.py --skip trainer fp32 --fresh-processes   # prediction as users run it
    python benchmarks/speed.py --model vit-base --train-images 96 --skip compile

Everything runs in this one process, on the same images, the same architecture with the same
seeded weights (random init: nothing can be downloaded here; or --model DIR for a local
pre-trained checkpoint), the same batch size, epochs, peak learning rate and worker count:
  * training: train.py's train() with its defaults (and once more with --precision fp32: the
    accuracy of the fast path against plain fp32) against transformers.Trainer with the Hugging
    Face example recipe (RandomResizedCrop + flip + normalise, fp32); images/s of the training
    phase (training loops and decoding) and end to end (with set-up, validation every epoch, saving);
  * prediction of the checkpoint our run saved, decoding and preprocessing included: the median
    latency of one image and the throughput of batches of 32, predict.py's path (fp32, default,
    --quantize, --compile, --runtime openvino and an export.py --format openvino-int8 model
    calibrated on the training split, when OpenVINO is installed) against transformers.pipeline,
    timed in turns; top-1 agreement with our fp32 predictions. --fresh-processes times each path
    in new processes of its own instead, as users run them;
  * achieved model FLOP/s against this machine's measured peak matmul FLOP/s (fp32 and bf16).
No timing is asserted anywhere: the script prints figures (and --json writes them).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402  (after the path, like the imports of our modules below)
from anchors import pipeline_classifier, train_with_trainer  # noqa: E402  (benchmarks/)

import export  # noqa: E402  (the export.py command, run as a user would)
from vitclassifier.data.dataset import ImageFolderDataset  # noqa: E402
from vitclassifier.data.folders import load_splits  # noqa: E402
from vitclassifier.data.synthetic import generate_data  # noqa: E402
from vitclassifier.devices import autocast_dtype, keep_freed_memory, pick_device  # noqa: E402
from vitclassifier.export.files import FORMATS  # noqa: E402
from vitclassifier.inference.loading import load_for_prediction  # noqa: E402
from vitclassifier.inference.predict import predict  # noqa: E402
from vitclassifier.model.vit import PRESETS, create_model  # noqa: E402
from vitclassifier.training import trainer  # noqa: E402

PEAK_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
ROUNDS = 3  # batch throughput: the median of this many passes over the images (this machine is noisy)


def peak_matmul_flops(dtype: torch.dtype, device: torch.device, size: int = 2048,
                      seconds: float = 2.0) -> float:
    """The best FLOP/s of a square matmul: what the hardware can do at most."""
    a, b = (torch.randn(size, size, device=device).to(dtype) for _ in range(2))
    best, deadline = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 2 * size ** 3 / best


def forward_flops(model: torch.nn.Module, image_size: int) -> int:
    """FLOPs of one forward pass of one image (matmuls and attention, counted by PyTorch)."""
    from torch.utils.flop_counter import FlopCounterMode
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model.eval()(pixel_values=torch.zeros(1, 3, image_size, image_size))
    return counter.get_total_flops()


def train_with_ours(args, out: Path, extra: list[str]) -> dict:
    """train.py's train(), as `python train.py ...` runs it, with its default recipe."""
    import train as train_script
    argv = ["--data", str(args.data), "--model", args.model, "--epochs", str(args.epochs), "--batch-size",
            str(args.batch_size), "--num-workers", str(args.num_workers), "--output-dir", str(out),
            "--device", args.device, "--seed", str(args.seed), "--patience", "0", *extra]
    argv += ["--no-pretrained"] if args.no_pretrained else []
    argv += ["--image-size", str(args.image_size)] if args.image_size else []
    _, config, given = train_script.parse_args(argv)
    phases = {"train_seconds": 0.0}

    def timed_phase(function):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                phases["train_seconds"] += time.perf_counter() - start
        return wrapper

    # The training phase: the epochs' training loops plus decoding into the cache (validation's too)
    originals = trainer.Trainer.train_epoch, ImageFolderDataset.fill_cache
    trainer.Trainer.train_epoch, ImageFolderDataset.fill_cache = (timed_phase(f) for f in originals)
    start = time.perf_counter()
    try:
        summary = train_script.train(config, given)
    finally:
        trainer.Trainer.train_epoch, ImageFolderDataset.fill_cache = originals
    return {"seconds": time.perf_counter() - start, **phases, "val_acc": summary["val_acc"],
            "lr": config.recipe.lr}


def timed(function, *arguments, **options) -> tuple[float, object]:
    start = time.perf_counter()
    result = function(*arguments, **options)
    return time.perf_counter() - start, result


def our_classifier(checkpoint: Path, device: torch.device, precision: str, quantize: bool = False,
                   compile_model: bool = False, runtime: str = "pytorch", export_format: str | None = None):
    """predict.py's path (load_for_prediction on the checkpoint, or on its export made by main; then
    predict, decoding and preprocessing included): files in, top-1 labels out; and the seconds the
    set-up took."""
    path = exported(checkpoint, export_format) if export_format else checkpoint
    setup, loaded = timed(load_for_prediction, path, device, precision, quantize, compile_model, runtime)

    def run(files: list[Path], batch_size: int) -> list[str]:
        return [result["label"] for result in predict(loaded, files, 1, batch_size)[0]]
    return run, setup


def exported(checkpoint: Path, export_format: str) -> Path:
    return checkpoint.with_name(checkpoint.name + FORMATS[export_format])


def export_for_prediction(checkpoint: Path, export_format: str, train: list) -> float:
    """export.py --format ``export_format`` of the checkpoint, calibrated (int8) on images of the
    training split, as a user would; returns its seconds."""
    calibration = checkpoint.parent / "calibration"  # links to the training split's images, by class
    for path, _ in train:
        link = calibration / path.parent.name / path.name
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.exists():
            link.symlink_to(path.resolve())
    seconds, code = timed(export.main, ["--model", str(checkpoint), "--format", export_format,
                                        "--calibration-images", str(calibration), "--bench-rounds", "0",
                                        "--overwrite"])
    if code != 0:
        raise SystemExit(f"export.py --format {export_format} failed")
    return seconds


# how predict.py is asked for each of our prediction paths
OURS = {"ours fp32": dict(precision="fp32"), "ours (default)": dict(precision="auto"),
        "ours --quantize": dict(precision="auto", quantize=True),
        "ours --compile": dict(precision="auto", compile_model=True),
        "ours --runtime openvino": dict(precision="auto", runtime="openvino"),
        "ours openvino-int8 export": dict(precision="auto", export_format="openvino-int8")}


def make_classifier(name: str, checkpoint: Path, device: torch.device):
    """The classifier called ``name`` in the tables: the pipeline, or one of OURS."""
    if name == "pipeline":
        return pipeline_classifier(checkpoint, device)
    return our_classifier(checkpoint, device, **OURS[name])


def time_in_fresh_processes(names: list[str], checkpoint: Path, device: torch.device, paths: list[Path],
                            singles: list[Path], work: Path) -> dict:
    """time_inference with each path in a new process of its own, as users run them: ours call
    keep_freed_memory first as predict.py does, the pipeline keeps glibc's defaults. Round by round,
    one process per path and round; the medians over the rounds."""
    (work / "files.json").write_text(json.dumps({"paths": [str(p) for p in paths],
                                                 "singles": [str(p) for p in singles]}))
    runs = {name: [] for name in names}
    for _ in range(ROUNDS):
        for name in names:
            command = [sys.executable, __file__, "--child", name, "--work", str(work),
                       "--device", device.type]
            output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
            runs[name].append(json.loads(output.splitlines()[-1]))
    return {name: {"single_ms": statistics.median(r["single_ms"] for r in results),
                   "batch_per_s": statistics.median(r["batch_per_s"] for r in results),
                   "setup_s": statistics.median(r["setup_s"] for r in results), "top1": results[0]["top1"]}
            for name, results in runs.items()}


def child(args: argparse.Namespace) -> int:
    """One path of time_in_fresh_processes: one round in this new process, the figures as JSON."""
    if args.child != "pipeline":
        keep_freed_memory()
    files = json.loads((args.work / "files.json").read_text())
    classifier = make_classifier(args.child, args.work / "ours" / "best", pick_device(args.device))
    print(json.dumps(time_inference({args.child: classifier}, [Path(p) for p in files["paths"]],
                                    [Path(p) for p in files["singles"]], rounds=1)[args.child]))
    return 0


def time_inference(classifiers: dict, paths: list[Path], singles: list[Path], rounds: int = ROUNDS) -> dict:
    """Single-image latencies and batch-32 throughput of every classifier, timed in turns (image by
    image, round by round) so that the shared machine's slow spells hit all of them alike."""
    results = {name: {"setup_s": setup, "latencies": [], "rounds": []}
               for name, (_, setup) in classifiers.items()}
    for name, (run, _) in classifiers.items():  # warm-up, and compilation for --compile
        results[name]["setup_s"] += timed(run, paths[:32], 32)[0] + timed(run, singles[:1], 1)[0]
    for path in singles:
        for name, (run, _) in classifiers.items():
            results[name]["latencies"].append(timed(run, [path], 1)[0])
    for _ in range(rounds):
        for name, (run, _) in classifiers.items():
            results[name]["rounds"].append(timed(run, paths, 32))
    return {name: {"single_ms": 1000 * statistics.median(result["latencies"]), "setup_s": result["setup_s"],
                   "batch_per_s": len(paths) / statistics.median(seconds for seconds, _ in result["rounds"]),
                   "top1": result["rounds"][0][1]} for name, result in results.items()}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="vit-small",
                   help=f"preset ({', '.join(PRESETS)}) or a local checkpoint directory")
    p.add_argument("--image-size", type=int, default=None,
                   help="model input size (default: the model's own, 224)")
    p.add_argument("--data", type=Path, default=None, help="class folders to use (default: generated shapes)")
    p.add_argument("--train-images", type=int, default=192,
                   help="generated training images (20%% more go to validation)")
    p.add_argument("--photo-size", type=int, default=320, help="side of the generated JPEGs, in pixels")
    p.add_argument("--epochs", type=int, default=2, help="epochs of both training runs")
    p.add_argument("--batch-size", type=int, default=16, help="training batch size of both")
    p.add_argument("--num-workers", type=int, default=0,
                   help="DataLoader workers of both (0: the Trainer's default, and ours on small CPUs)")
    p.add_argument("--inference-images", type=int, default=96, help="images of the batch-32 inference test")
    p.add_argument("--single-images", type=int, default=20, help="images timed one at a time (median)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where everything runs")
    p.add_argument("--ours", default="",
                   help="extra train.py options for our run, e.g. '--cache-mb 0' (a lever)")
    p.add_argument("--skip", nargs="*", default=[],
                   choices=["trainer", "fp32", "inference", "pipeline", "compile", "openvino"],
                   help="leave parts out: the Trainer run, our fp32 run, all prediction, the pipeline, our "
                        "--compile or --runtime openvino prediction")
    p.add_argument("--fresh-processes", action="store_true",
                   help="time each prediction path in new processes of its own, as users run them (ours with "
                        "predict.py's allocator setting, the pipeline with glibc's defaults); no --compile")
    p.add_argument("--child", help=argparse.SUPPRESS)  # one path of --fresh-processes
    p.add_argument("--seed", type=int, default=42,
                   help="seed of the split, weights and augmentation of both")
    p.add_argument("--work", type=Path, default=None,
                   help="where data and checkpoints go (default: a temp dir)")
    p.add_argument("--json", type=Path, default=None, help="also write the figures as JSON")
    args = p.parse_args(argv)
    args.no_pretrained = args.model in PRESETS  # presets can't be downloaded here: same random init for both
    return args


def prediction_paths(args: argparse.Namespace, device: torch.device, checkpoint: Path, train: list,
                     figures: dict) -> list[str]:
    """The names of the prediction paths to time (OURS and the pipeline); exports the int8 OpenVINO
    model first when that row is in (its seconds go to figures["export_s"])."""
    names = ["ours fp32", "ours (default)"] + (["ours --quantize"] if device.type == "cpu" else [])
    if "compile" not in args.skip and not args.fresh_processes:
        names.append("ours --compile")
    if device.type == "cpu" and "openvino" not in args.skip:
        if importlib.util.find_spec("openvino"):
            names.append("ours --runtime openvino")
            if importlib.util.find_spec("nncf"):
                figures["export_s"] = export_for_prediction(checkpoint, "openvino-int8", train)
                names.append("ours openvino-int8 export")
        else:
            print("note: no openvino package, so no --runtime openvino row "
                  "(pip install -r requirements-extras.txt)")
    if "pipeline" not in args.skip:
        names.append("pipeline")
    return names


def prediction_figures(args: argparse.Namespace, device: torch.device, work: Path, train: list, val: list,
                       figures: dict) -> dict:
    """Every prediction path timed on the checkpoint of our default run, with its top-1 agreement
    with our fp32 predictions."""
    checkpoint = work / "ours" / "best"
    files = [path for path, _ in val + train][:args.inference_images]
    singles = files[:args.single_images]
    names = prediction_paths(args, device, checkpoint, train, figures)
    if args.fresh_processes:
        inference = time_in_fresh_processes(names, checkpoint, device, files, singles, work)
    else:
        classifiers = {name: make_classifier(name, checkpoint, device) for name in names}
        inference = time_inference(classifiers, files, singles)
    reference_top1 = inference["ours fp32"]["top1"]
    for result in inference.values():
        result["agreement"] = sum(a == b for a, b in zip(result.pop("top1"), reference_top1)) / len(files)
    return inference


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        return child(args)
    keep_freed_memory()  # what train.py and predict.py do at start; here it serves Hugging Face's paths alike
    work = args.work or Path(tempfile.mkdtemp(prefix="speed-bench-"))
    device = pick_device(args.device)
    if args.data is None:
        args.data = work / "data"
        if not args.data.is_dir():
            per_class = max(2, round(args.train_images / 0.8 / 3))
            generate_data(args.data, ["circle", "stripes", "cross"], per_class, args.photo_size, args.seed,
                          work)
    labels, train, val = load_splits(args.data, 0.2, args.seed)
    print(f"{args.model} @ {args.image_size or 224}px on {device.type} ({torch.get_num_threads()} threads): "
          f"{len(train)} training and {len(val)} validation images, {args.epochs} epochs, "
          f"batch {args.batch_size}, {args.num_workers} worker(s)")
    figures = {f"peak_{name}": peak_matmul_flops(dtype, device) for name, dtype in PEAK_DTYPES.items()}
    probe, prep = create_model(args.model, labels, pretrained=not args.no_pretrained,
                               image_size=args.image_size)
    figures["forward_flops"] = forward_flops(probe, prep.image_size)
    del probe

    figures["ours"] = train_with_ours(args, work / "ours", args.ours.split())
    fast_dtype = autocast_dtype(device, "auto")
    if "fp32" not in args.skip:
        figures["ours_fp32"] = train_with_ours(args, work / "ours-fp32",
                                               args.ours.split() + ["--precision", "fp32"])
    if "trainer" not in args.skip:
        figures["trainer"] = train_with_trainer(args, labels, train, val, figures["ours"]["lr"], work)

    if "inference" in args.skip:
        figures["inference"] = {}
        print_tables(figures, args, len(train), fast_dtype)
        return 0
    figures["inference"] = prediction_figures(args, device, work, train, val, figures)
    # measured again at the end: the best of both, as the machine varies
    for name, dtype in PEAK_DTYPES.items():
        figures[f"peak_{name}"] = max(figures[f"peak_{name}"], peak_matmul_flops(dtype, device))
    print_tables(figures, args, len(train), fast_dtype)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


def print_tables(figures: dict, args: argparse.Namespace, n_train: int,
                 fast_dtype: torch.dtype | None) -> None:
    """The training table, the inference table and the hardware figures, with ratios to the anchors."""
    peaks = {"fp32": figures["peak_fp32"], "bf16": figures["peak_bf16"]}
    fast = "bf16" if fast_dtype == torch.bfloat16 else "fp32"
    flops = figures["forward_flops"]

    def of_peak(flop_per_s: float, precision: str) -> str:
        share = 100 * flop_per_s / peaks[precision]
        return f"{flop_per_s / 1e9:7.1f} GFLOP/s = {share:4.1f}% of {precision} peak"

    print(f"\nPeak matmul here: fp32 {peaks['fp32'] / 1e9:.0f} GFLOP/s, "
          f"bf16 {peaks['bf16'] / 1e9:.0f} GFLOP/s; the model: {flops / 1e9:.2f} GFLOP per image forward "
          f"(x3 for a training step)")
    anchor = figures.get("trainer")
    print(f"\nTraining, {args.epochs} epochs x {n_train} images; images/s of the training phase (the epochs' "
          f"training loops and decoding) and end to end (also model set-up, validation each epoch, saving)")
    print(f"{'run':<26}{'train img/s':>12}{'vs Trainer':>11}{'end to end':>11}{'vs Trainer':>11}"
          f"{'val acc':>9}   achieved (training phase)")
    runs = [("train.py (default)", figures["ours"], fast),
            ("train.py --precision fp32", figures.get("ours_fp32"), "fp32"),
            ("transformers.Trainer", anchor, "fp32")]
    for name, result, precision in runs:
        if result:
            rate, overall = (args.epochs * n_train / result[key] for key in ("train_seconds", "seconds"))
            ratios = [f"{anchor[key] / result[key]:.2f}x" if anchor else "-"
                      for key in ("train_seconds", "seconds")]
            print(f"{name:<26}{rate:12.2f}{ratios[0]:>11}{overall:11.2f}{ratios[1]:>11}"
                  f"{result['val_acc']:9.3f}   {of_peak(3 * flops * rate, precision)}")
    inference = figures["inference"]
    if not inference:
        return
    pipe = inference.get("pipeline")
    print("\nPrediction, decoding and preprocessing included (batch: 32 images per call)")
    print(f"{'path':<26}{'1 image ms':>11}{'vs pipeline':>12}{'batch img/s':>12}{'vs pipeline':>12}"
          f"{'top-1 = fp32':>13}   achieved (batch)")
    for name, result in inference.items():
        single = f"{result['single_ms'] / pipe['single_ms']:.2f}x" if pipe else "-"
        batch = f"{result['batch_per_s'] / pipe['batch_per_s']:.2f}x" if pipe else "-"
        precision = "fp32" if name in ("ours fp32", "pipeline") else fast  # int8 rows too: can pass 100%
        print(f"{name:<26}{result['single_ms']:11.1f}{single:>12}{result['batch_per_s']:12.1f}{batch:>12}"
              f"{100 * result['agreement']:12.1f}%   {of_peak(flops * result['batch_per_s'], precision)}"
              + (f"  (setup {result['setup_s']:.0f}s)" if result.get("setup_s", 0) > 5 else "")
              + (f"  (export {figures['export_s']:.0f}s, once)" if "export" in name else ""))


if __name__ == "__main__":
    sys.exit(main())
