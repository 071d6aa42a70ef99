"""Each speed lever on its own: what it buys for one training step, one prediction batch, one image.

    python benchmarks/levers.py                    # vit-small @224 on the CPU: about 4 minutes on 2 cores
    python benchmarks/levers.py --model vit-tiny --quick

benchmarks/speed.py compares whole runs with Hugging Face's Trainer and pipeline; this script
isolates the levers behind them, on random inputs (no data needed), so each choice in train.py
and predict.py can be checked on your own machine:
  * training step (forward, backward, AdamW): fp32 vs bf16 autocast; SDPA vs eager vs bf16-softmax
    attention; bf16 activations between blocks (model/attention.run_in_bf16); fused vs foreach AdamW;
    torch.compile;
  * prediction at batch 32 and batch 1: fp32, bf16 autocast alone, predict.py's bf16 (the whole
    model in bf16, bf16-softmax attention), dynamic int8 (whole batches, and in chunks of 8 to keep
    activations in cache), OpenVINO in bf16 and with static int8, torch.compile (inductor freezing);
  * the data side, per image: decoding a big JPEG with and without Pillow's draft mode (one core,
    as a loader worker), and the batched training augmentation (data/augment.py) on decoded images,
    each augmentation alone and all of them, as the training loop runs it;
  * glibc's allocator left as it is or told to keep freed memory (devices.keep_freed_memory, which
    train.py and predict.py call): fresh processes, as users run them, alternating.
Every figure is the median of several timed repeats after a warm-up.
"""
from __future__ import annotations

import argparse
import importlib.util
import io
import json
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from vitclassifier.devices import autocast, keep_freed_memory  # noqa: E402
from vitclassifier.model.attention import BF16_SOFTMAX, register_bf16_softmax, run_in_bf16  # noqa: E402
from vitclassifier.model.vit import PRESETS, create_model  # noqa: E402


def median_seconds(function, repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def interleaved_medians(functions: dict, repeats: int, warmup: int = 1) -> dict[str, float]:
    """Median seconds of each function, timed in turns (A, B, C, A, B, C, ...) so that a slow
    spell of a shared machine hits every variant alike instead of one of them."""
    for function in functions.values():
        for _ in range(warmup):
            function()
    times = {name: [] for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            start = time.perf_counter()
            function()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def fresh_model(args, attention: str = "sdpa") -> torch.nn.Module:
    torch.manual_seed(0)
    model, _ = create_model(args.model, ["a", "b", "c"], pretrained=False, image_size=args.image_size)
    model.set_attn_implementation(register_bf16_softmax() if attention == BF16_SOFTMAX else attention)
    return model


def training_step(args, dtype, attention: str, fused: bool, compiled: bool = False,
                  as_train_py: bool = False):
    """A function doing one forward + backward + AdamW step at --batch-size; ``as_train_py``: with
    train.py's run_in_bf16 (bf16-softmax attention, bf16 activations between blocks)."""
    model = fresh_model(args, attention).train()
    if as_train_py:
        run_in_bf16(model, torch.device("cpu"), dtype, training=True)
    optimizer = torch.optim.AdamW(model.parameters(), 1e-4, fused=fused or None,
                                  foreach=None if fused else True)
    net = torch.compile(model) if compiled else model
    images = torch.randn(args.batch_size, 3, args.image_size, args.image_size)
    labels = torch.randint(0, 3, (args.batch_size,))

    def step():
        with autocast(torch.device("cpu"), dtype):
            loss = F.cross_entropy(net(pixel_values=images).logits.float(), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def prediction_runs(args, variant: str):
    """(batch-32 function, one-image function) of the model alone in inference mode, as predict.py
    prepares it."""
    from vitclassifier.inference.loading import prepare_model
    batch = torch.randn(32, 3, args.image_size, args.image_size)
    if variant.startswith("OpenVINO"):
        from vitclassifier.export.openvino import convert, quantize_static
        from vitclassifier.export.runtimes import OpenVinoModel
        converted = convert(fresh_model(args), args.image_size)
        if "int8" in variant:  # ranges measured on noise: fine for timing, not for predicting
            converted = quantize_static(converted, batch[:16])
        model, dtype = OpenVinoModel(converted, bf16=True), None
    elif variant == "bf16 autocast alone":
        model, dtype = fresh_model(args).eval(), torch.bfloat16
    else:
        model, dtype = prepare_model(fresh_model(args), torch.device("cpu"),
                                     "fp32" if variant == "fp32" else "bf16",
                                     quantize=variant.startswith("int8"), compile_model=variant == "compile")
    chunk = 8 if "chunks" in variant else 32

    def run(images):
        with torch.inference_mode(), autocast(torch.device("cpu"), dtype):
            for part in images.split(chunk):
                model(pixel_values=part)
    return (lambda: run(batch)), (lambda: run(batch[:1]))


def data_costs(args) -> dict[str, float]:
    """Milliseconds per image of decoding (one thread, like a loader worker) and of the batched
    training augmentation on a batch of 32 decoded images (every thread, like the training loop)."""
    from PIL import Image
    from torchvision.transforms import v2

    from vitclassifier.data.augment import BatchAugment, train_decode
    from vitclassifier.data.images import load_image
    from vitclassifier.data.transforms import Preprocessing
    torch.set_num_threads(1)
    # a 12 MP "photo"
    photo = Image.effect_mandelbrot((4000, 3000), (-2.0, -1.2, 1.0, 1.2), 60).convert("RGB")
    buffer = io.BytesIO()
    photo.save(buffer, "JPEG", quality=90)
    path = Path(args.work) / "photo.jpg"
    path.write_bytes(buffer.getvalue())
    prep = Preprocessing(args.image_size)
    decode = train_decode(prep)
    cached = decode(load_image(path, prep.resize_size))
    costs = {"decode 12 MP JPEG, full size": median_seconds(lambda: load_image(path), 3),
             "decode 12 MP JPEG, draft mode (what we do)":
                 median_seconds(lambda: load_image(path, prep.resize_size), 3),
             "decode + resize, once into the cache": median_seconds(
                 lambda: decode(load_image(path, prep.resize_size)), 3)}
    crop = v2.CenterCrop(args.image_size)(cached)
    costs["ColorJitter with a hue shift (dropped), one image"] = median_seconds(
        lambda: v2.ColorJitter(0.3, 0.3, 0.3, 0.05)(crop), 20)
    torch.set_num_threads(args.threads)
    batch = cached.expand(32, -1, -1, -1).contiguous()
    names = ("crop", "flip", "rotate", "color_jitter")
    for name in names:
        alone = BatchAugment(prep, **{other: other == name for other in names})
        alone_cost = median_seconds(lambda alone=alone: alone(batch), 10)
        costs[f"{name} alone, batch of 32"] = alone_cost / len(batch)
    every = BatchAugment(prep)
    costs["all four (train.py's default), batch of 32"] = median_seconds(lambda: every(batch), 10) / 32
    return {name: 1000 * seconds for name, seconds in costs.items()}


def fresh_process_figures(args) -> dict[str, float]:
    """Images/s of train.py's step and of bf16 and int8 prediction batches, in this (new) process."""
    figures = {"training step": (training_step(args, torch.bfloat16, "sdpa", True, as_train_py=True),
                                 args.batch_size)}
    for variant in ("bf16", "int8"):
        figures[f"{variant} prediction, batch 32"] = (prediction_runs(args, variant)[0], 32)
    return {name: size / median_seconds(run, args.repeats) for name, (run, size) in figures.items()}


def allocator_figures(args, rounds: int = 2) -> dict[str, dict[str, float]]:
    """fresh_process_figures without and with keep_freed_memory, each in new processes, alternating."""
    results = {"as glibc leaves it": [], "keep_freed_memory (train.py, predict.py)": []}
    for _ in range(rounds):
        for keep, name in zip(("off", "on"), results):
            command = [sys.executable, __file__, "--model", args.model, "--image-size", str(args.image_size),
                       "--batch-size", str(args.batch_size), "--repeats", str(args.repeats),
                       "--allocator", keep]
            results[name].append(json.loads(subprocess.run(command, capture_output=True, text=True,
                                                            check=True).stdout.splitlines()[-1]))
    return {name: {figure: statistics.median(run[figure] for run in runs) for figure in runs[0]}
            for name, runs in results.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="vit-small", choices=list(PRESETS),
                   help="preset architecture (random weights)")
    p.add_argument("--image-size", type=int, default=224, help="input size in pixels")
    p.add_argument("--batch-size", type=int, default=16, help="training batch size")
    p.add_argument("--repeats", type=int, default=6, help="timed repeats per figure (the median is shown)")
    p.add_argument("--quick", action="store_true", help="skip torch.compile (each compile takes 20-60 s)")
    p.add_argument("--work", default="/tmp", help="where the test JPEG is written")
    p.add_argument("--allocator", choices=["on", "off"], help=argparse.SUPPRESS)  # the fresh processes' mode
    args = p.parse_args(argv)
    args.threads = torch.get_num_threads()
    warnings.filterwarnings("ignore")
    if args.allocator:
        if args.allocator == "on":
            keep_freed_memory()
        print(json.dumps(fresh_process_figures(args)))
        return 0
    keep_freed_memory()  # as train.py and predict.py
    print(f"{args.model} @ {args.image_size}px, {args.threads} threads, batch {args.batch_size}")

    print("\nTraining step (forward + backward + AdamW), images/s; variants timed in turns")
    bf16 = torch.bfloat16
    variants = {"fp32, SDPA attention, foreach AdamW": (None, "sdpa", False),
                "bf16, SDPA attention, foreach AdamW": (bf16, "sdpa", False),
                "bf16, SDPA attention, fused AdamW": (bf16, "sdpa", True),
                "bf16, eager attention, fused AdamW": (bf16, "eager", True),
                "bf16, bf16-softmax attention, fused AdamW": (bf16, "bf16_softmax", True),
                "  + bf16 between blocks (train.py)": (bf16, "sdpa", True, False, True)}
    if not args.quick:
        variants["  + torch.compile (--compile)"] = (bf16, "sdpa", True, True, True)
    steps = {name: training_step(args, *options) for name, options in variants.items()}
    for name, seconds in interleaved_medians(steps, args.repeats, warmup=2).items():
        print(f"  {name:<52}{args.batch_size / seconds:7.2f}")
    del steps

    print("\nPrediction, model alone: images/s at batch 32 | ms for one image; timed in turns")
    variants = ["fp32", "bf16 autocast alone", "bf16", "int8", "int8, the batch in chunks of 8"]
    if importlib.util.find_spec("openvino") and importlib.util.find_spec("nncf"):
        variants += ["OpenVINO bf16 (--runtime openvino)", "OpenVINO static int8 (export openvino-int8)"]
    runs = {variant: prediction_runs(args, variant)
            for variant in variants + ([] if args.quick else ["compile"])}
    batches = interleaved_medians({name: run[0] for name, run in runs.items()}, args.repeats, warmup=2)
    singles = interleaved_medians({name: run[1] for name, run in runs.items()}, 4 * args.repeats, warmup=2)
    for name in runs:
        print(f"  {name:<52}{32 / batches[name]:7.2f} | {1000 * singles[name]:6.1f}")

    print("\nMemory allocator, images/s in fresh processes (medians of 2 each, alternating)")
    for name, figures in allocator_figures(args).items():
        print(f"  {name}: " + ", ".join(f"{figure} {rate:.2f}" for figure, rate in figures.items()))

    print("\nData, ms per image: decoding on one core, batch augmentation on every core")
    for name, milliseconds in data_costs(args).items():
        print(f"  {name:<52}{milliseconds:7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
