"""Does the fine-tuning recipe pay? Plain fine-tuning vs the recipe's parts, same epoch budget.

    pip install scikit-learn          # only for the digits data set used here
    python benchmarks/recipe.py --work /tmp/recipe-bench

Offline, so there are no public pre-trained weights: the script pre-trains a vit-tiny from
scratch on generated shapes (our own "ImageNet"), then fine-tunes it on two small target sets
it has never seen: scikit-learn's bundled handwritten digits (8x8 grey, upscaled) and three new
shapes with 60 images each. Every variant runs train.py as a user would; the table shows the
best validation accuracy. Takes about 15-20 minutes on 2 CPU cores.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PLAIN = ["--head-lr", "1e-4", "--layer-decay", "1", "--label-smoothing", "0"]
VARIANTS = {  # name -> train.py options: plain fine-tuning, then plain plus one part of the recipe
    "plain fine-tuning": PLAIN,
    "+ layer decay 0.75": PLAIN + ["--layer-decay", "0.75"],
    "+ head LR 10x": PLAIN + ["--head-lr", "1e-3"],
    "+ label smoothing 0.1": PLAIN + ["--label-smoothing", "0.1"],
    "+ head-only first epoch": PLAIN + ["--freeze-epochs", "1"],
    "+ EMA 0.995": PLAIN + ["--ema", "0.995"],
    "+ mixup 0.2 / cutmix 1.0": PLAIN + ["--mixup", "0.2", "--cutmix", "1.0"],
}


def train(data: Path, out: Path, *options: str) -> dict:
    """One train.py run (skipped when ``out`` already holds it); its best/training_info.json and wall time."""
    start = time.time()
    if not (out / "best" / "training_info.json").is_file():
        subprocess.run([sys.executable, str(ROOT / "train.py"), "--data", str(data), "--output-dir", str(out),
                        "--num-workers", "1", *options], check=True, stdout=subprocess.DEVNULL)
    info = json.loads((out / "best" / "training_info.json").read_text())
    return {**info, "seconds": time.time() - start}


def measure_tta(checkpoint: Path, data: Path) -> dict:
    """Validation accuracy and milliseconds per image of predict.py's path (fp32, on the CPU, with the
    checkpoint's calibrated temperature), with and without --tta."""
    sys.path.insert(0, str(ROOT))
    import torch

    from vitclassifier.data.folders import load_splits
    from vitclassifier.inference.loading import load_for_prediction
    from vitclassifier.inference.predict import predict
    loaded = load_for_prediction(checkpoint, torch.device("cpu"), precision="fp32")
    _, _, val = load_splits(data, 0.2, 42)
    truth = {str(path): label for path, label in val}
    figures = {}
    for tta in (False, True):
        start = time.perf_counter()
        results, _ = predict(loaded, [p for p, _ in val], 1, 32, tta)
        seconds = time.perf_counter() - start
        hits = sum(loaded.labels.index(r["label"]) == truth[r["path"]] for r in results)
        figures[tta] = (hits / len(results), 1000 * seconds / len(results))
    return figures


def make_digits(root: Path, size: int) -> Path:
    """scikit-learn's 1,797 handwritten digits (8x8, 16 grey levels) as 10 class folders of PNGs."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits
    digits = load_digits()
    for i, (pixels, label) in enumerate(zip(digits.images, digits.target)):
        folder = root / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        image = Image.fromarray((pixels * 255 / 16).astype(np.uint8), mode="L")
        image.resize((size, size), Image.BICUBIC).save(folder / f"{i:04d}.png")
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("recipe-bench"), help="scratch folder")
    parser.add_argument("--epochs", type=int, default=5, help="fine-tuning epochs for every variant")
    parser.add_argument("--pretrain-epochs", type=int, default=6,
                        help="epochs of the from-scratch pre-training")
    args = parser.parse_args()
    work, size = args.work, "64"
    work.mkdir(parents=True, exist_ok=True)
    generate = [sys.executable, str(ROOT / "classifier.py"), "--generate-data", "--image-size", size]
    if not (work / "pretrained" / "best").is_dir():
        subprocess.run([*generate, "--out", str(work / "source"),
                        "--classes", "circle,triangle,star,cross,stripes", "--per-class", "600",
                        "--samples-dir", str(work / "samples")], check=True)
        info = train(work / "source", work / "pretrained", "--model", "vit-tiny", "--no-pretrained",
                     "--image-size", size, "--epochs", str(args.pretrain_epochs), "--batch-size", "32",
                     "--no-rotate", "--no-color-jitter")
        print(f"pre-trained vit-tiny on 5 shapes: val acc {info['val_acc']:.3f} ({info['seconds']:.0f} s)")
    subprocess.run([*generate, "--out", str(work / "new-shapes"), "--classes", "square,ring,hexagon",
                    "--per-class", "60", "--seed", "1", "--samples-dir", str(work / "samples")], check=True)
    targets = {"digits (10 classes, ~144 train/class)": (make_digits(work / "digits", 64), ["--no-flip"]),
               "new shapes (3 classes, 48 train/class)": (work / "new-shapes", [])}
    common = ["--model", str(work / "pretrained" / "best"), "--epochs", str(args.epochs),
              "--batch-size", "16", "--lr", "1e-4", "--patience", "0", "--no-calibrate"]
    results = {}
    for target, (data, extra) in targets.items():
        for name, options in VARIANTS.items():
            out = work / "runs" / f"{data.name}-{len(results)}"
            results[(target, name)] = train(data, out, *common, *extra, *options)
            info = results[(target, name)]
            print(f"{target:40} {name:50} val acc {info['val_acc']:.3f}  "
                  f"({info['weights']}, {info['seconds']:.0f} s)", flush=True)
    print("\nTest-time augmentation on the plain fine-tuned checkpoints (predict.py's path, batch 32, CPU):")
    for target, (data, _) in targets.items():
        index = list(targets).index(target) * len(VARIANTS)
        figures = measure_tta(work / "runs" / f"{data.name}-{index}" / "best", data)
        print(f"  {target}: accuracy {figures[False][0] * 100:.1f}% -> {figures[True][0] * 100:.1f}% "
              f"with --tta, {figures[False][1]:.1f} -> {figures[True][1]:.1f} ms per image")
    print(f"\n| variant ({args.epochs} epochs) | " + " | ".join(targets) + " |")
    print("|---|" + "---|" * len(targets))
    for name in VARIANTS:
        scores = " | ".join(f"{results[(t, name)]['val_acc'] * 100:.1f}%" for t in targets)
        print(f"| {name} | {scores} |")


if __name__ == "__main__":
    main()
