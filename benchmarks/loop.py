"""The training loop alone: our data path and loop against transformers.Trainer's, with a model that
costs next to nothing, so whatever is slow is the loop and the data pipeline, not the network.

    python benchmarks/loop.py                      # 1,000 JPEGs of 400x300, batch 32, workers 0 and 2
    python benchmarks/loop.py --workers 0 --images 500 --json loop.json

The model is a ViT of one block, 32 wide, patch 32 at 224 px, built and saved here (offline). Both
sides train on the same JPEGs, with the same batch and worker count:
  * ours: vitclassifier's Trainer with train.py's defaults (decode-once cache, default augmentation
    rotate + crop + flip + jitter on whole batches); the second epoch is timed (the first one fills
    the cache, as a user's first epoch does);
  * theirs: transformers.Trainer with the Hugging Face example recipe (benchmarks/anchors.py), which
    decodes every JPEG every epoch; its training phase is timed over both epochs.
Printed: images/s, images/s per worker process (0 workers: the main process), and the main
process's time per step outside the model (the step time minus a forward + backward of the model
on a ready batch, measured here). No timing is asserted; the figures go to docs/performance.md.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from anchors import train_with_trainer  # noqa: E402  (benchmarks/)
from PIL import Image, ImageDraw  # noqa: E402

from vitclassifier.config import TrainConfig  # noqa: E402
from vitclassifier.data.folders import load_splits  # noqa: E402
from vitclassifier.devices import keep_freed_memory, pick_device  # noqa: E402
from vitclassifier.training.distributed import World  # noqa: E402
from vitclassifier.training.resume import StopSignal  # noqa: E402
from vitclassifier.training.trainer import Trainer  # noqa: E402

CLASSES = ("disc", "box", "bar", "plain")


def write_jpegs(root: Path, count: int, seed: int = 0) -> Path:
    """``count`` 400x300 JPEGs in four classes: a disc, a box, a bar or nothing, on noise."""
    rng = np.random.default_rng(seed)
    for index in range(count):
        name = CLASSES[index % len(CLASSES)]
        pixels = rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)
        image = Image.fromarray(pixels)
        draw, (x, y) = ImageDraw.Draw(image), rng.integers(60, 240, 2)
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        if name == "disc":
            draw.ellipse([x, y - 40, x + 80, y + 40], fill=colour)
        elif name == "box":
            draw.rectangle([x, y - 40, x + 80, y + 40], fill=colour)
        elif name == "bar":
            draw.rectangle([x, 0, x + 20, 299], fill=colour)
        (root / name).mkdir(parents=True, exist_ok=True)
        image.save(root / name / f"{index:05d}.jpg", quality=90)
    return root


def save_tiny_model(directory: Path) -> Path:
    """A ViT of one block, 32 wide, patch 32 at 224 px: its compute is about zero."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor
    torch.manual_seed(0)
    config = ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=1, intermediate_size=64,
                       image_size=224, patch_size=32, num_labels=len(CLASSES))
    ViTForImageClassification(config).save_pretrained(directory)
    ViTImageProcessor(size={"height": 224, "width": 224}).save_pretrained(directory)
    return directory


def model_seconds_per_step(trainer: Trainer, batch_size: int) -> float:
    """Forward + backward + optimizer step of the model on a ready normalised batch, on the device."""
    pixels = torch.randn(batch_size, 3, 224, 224, device=trainer.device)
    labels = torch.zeros(batch_size, dtype=torch.long, device=trainer.device)
    net, optimizer = trainer.parts.model, trainer.parts.optimizer
    seconds = []
    for _ in range(12):
        start = time.perf_counter()
        with trainer.ctx.autocast():
            loss = torch.nn.functional.cross_entropy(net(pixel_values=pixels).logits.float(), labels)
        loss.backward()
        optimizer.zero_grad(set_to_none=True)
        if trainer.device.type == "cuda":
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
    return float(np.median(seconds[2:]))


def time_ours(data: Path, model: Path, out: Path, workers: int, args: argparse.Namespace) -> dict:
    """The Trainer's second epoch: images/s and the time per step outside the model."""
    config = TrainConfig.from_options({"data": data, "model": str(model), "epochs": 2,
                                       "batch_size": args.batch_size, "num_workers": workers,
                                       "output_dir": out, "patience": 0, "device": args.device, "seed": 0})
    trainer = Trainer(config, World(), pick_device(args.device))  # set up: the cache filled
    with StopSignal(announce=False) as stop:
        trainer.train_epoch(stop)  # warms up
        trainer.state.epoch, trainer.state.step = 2, 0
        start = time.perf_counter()
        trainer.train_epoch(stop)
        if trainer.device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    steps, images = trainer.parts.sampler.steps, trainer.parts.sampler.steps * args.batch_size
    model_step = model_seconds_per_step(trainer, args.batch_size)
    return {"images_per_s": images / seconds, "step_ms": 1000 * seconds / steps,
            "outside_model_ms": 1000 * (seconds / steps - model_step), "model_step_ms": 1000 * model_step}


def time_trainer(data: Path, model: Path, work: Path, workers: int, args: argparse.Namespace) -> dict:
    labels, train, val = load_splits(data, 0.2, 0)
    options = SimpleNamespace(model=str(model), no_pretrained=False, image_size=None,
                              batch_size=args.batch_size, epochs=2, seed=0, num_workers=workers,
                              device=args.device)
    result = train_with_trainer(options, labels, train, val, 5e-5, work)
    # two epochs (the last partial batch aside)
    images = 2 * (len(train) // args.batch_size) * args.batch_size
    return {"images_per_s": images / result["train_seconds"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=1000, help="JPEGs to train on (80%% train, 20%% validation)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="DataLoader worker counts to time")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    p.add_argument("--json", type=Path, help="also write the figures as JSON")
    args = p.parse_args(argv)
    keep_freed_memory()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data, model = write_jpegs(work / "data", args.images), save_tiny_model(work / "tiny-vit")
        for workers in args.workers:
            ours = time_ours(data, model, work / f"ours-{workers}", workers, args)
            theirs = time_trainer(data, model, work / f"trainer-{workers}", workers, args)
            rows.append({"workers": workers, "ours": ours, "trainer": theirs,
                         "ratio": ours["images_per_s"] / theirs["images_per_s"]})
    print(f"\n{'workers':>7} {'ours img/s':>11} {'per worker':>11} {'Trainer img/s':>14} {'ratio':>6} "
          f"{'step ms':>8} {'outside model ms':>17} {'model ms':>9}")
    for row in rows:
        ours, processes = row["ours"], max(1, row["workers"])
        print(f"{row['workers']:>7} {ours['images_per_s']:>11.0f} {ours['images_per_s'] / processes:>11.0f} "
              f"{row['trainer']['images_per_s']:>14.0f} {row['ratio']:>5.2f}x {ours['step_ms']:>8.1f} "
              f"{ours['outside_model_ms']:>17.1f} {ours['model_step_ms']:>9.1f}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
