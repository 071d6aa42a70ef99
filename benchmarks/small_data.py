"""Small data: which recipe gives the best model from 10 to 100 images per class (issue 29)?

    apt-get install dataset-fashion-mnist   # Fashion-MNIST, offline (Debian); digits ship with scikit-learn
    OMP_NUM_THREADS=1 python benchmarks/small_data.py --work /tmp/small-data --recipes fixed,hf

Two real data sets that can be had offline, as folders of PNGs (one sub-folder per class, upscaled to
--image-size): scikit-learn's handwritten digits and Fashion-MNIST. For each case, images per class,
seed and recipe it trains on a seeded sample of N images per class and scores the model on a held-out
test folder of the same classes (never seen in training or validation). Cases:

  digits:transfer   a vit-tiny pre-trained here on Fashion-MNIST (many images), fine-tuned on digits
  digits:scratch    the same from random weights
  fashion:scratch   Fashion-MNIST from random weights (its test images are disjoint from pre-training's)

Recipes: ``fixed`` and ``auto`` run ``train.py --recipe NAME`` (a train.py without --recipe trains
``fixed`` as it is); ``hf`` is transformers.Trainer with the Hugging Face example's recipe
(benchmarks/anchors.py), at the same epochs. Every model is scored by ``train.py --evaluate``.
"""
from __future__ import annotations

import argparse
import gzip
import json
import re
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from functools import cache
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FASHION = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist
FASHION_CLASSES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
                   "ankle-boot"]
CASES = {"digits:transfer": ("digits", True), "digits:scratch": ("digits", False),
         "fashion:scratch": ("fashion", False)}
RECIPES = ("fixed", "auto", "hf", "grid")
TABLE_ORDER = ("fixed", "auto", "hf", "grid, best by val", "grid, best on test")
TEST_PER_CLASS = 50  # held out per class and seed, the same for every N
SCORE = re.compile(r"images \| loss \S+ acc (\S+) top3 \S+ macro-F1 (\S+)")


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (MNIST's format: big-endian dimension sizes after a 4-byte magic number), gzipped."""
    data = gzip.decompress(path.read_bytes())
    dims = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def fashion_mnist(part: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Fashion-MNIST's ``train`` (60,000) or ``t10k`` (10,000) images (28x28 grey), labels and classes."""
    images = FASHION / f"{part}-images-idx3-ubyte.gz"
    if not images.is_file():
        sys.exit(f"{images} is missing: apt-get install dataset-fashion-mnist (Debian's package)")
    return read_idx(images), read_idx(FASHION / f"{part}-labels-idx1-ubyte.gz"), FASHION_CLASSES


def digits() -> tuple[np.ndarray, np.ndarray, list[str]]:
    """scikit-learn's 1,797 handwritten digits (8x8, 16 grey levels, 174 to 183 a class) as 0-255 grey."""
    from sklearn.datasets import load_digits
    data = load_digits()
    return (data.images * 255 / 16).round().astype(np.uint8), data.target, [str(d) for d in range(10)]


def write_folder(root: Path, images: np.ndarray, labels: np.ndarray, classes: list[str],
                 indices: list[int], size: int) -> Path:
    """The chosen images as root/CLASS/NNNNN.png, upscaled (bicubic) to ``size`` pixels square."""
    from PIL import Image
    for name in classes:
        (root / name).mkdir(parents=True, exist_ok=True)
    for index in indices:
        image = Image.fromarray(images[index], mode="L").resize((size, size), Image.BICUBIC)
        image.save(root / classes[labels[index]] / f"{index:05d}.png")
    return root


def sample_split(labels: np.ndarray, per_class: int, test_per_class: int,
                 seed: int) -> tuple[list[int], list[int]]:
    """(train, test) indices: per class, a seeded shuffle whose first ``test_per_class`` are the test
    images and the next ``per_class`` the training ones. The test part depends on the seed only, so
    every N of a seed is scored on the same images, and a larger N holds the smaller N's images."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label)).tolist()
        if len(members) < test_per_class + per_class:
            raise ValueError(f"class {label} has {len(members)} images, fewer than {test_per_class} test + "
                             f"{per_class} training")
        test += members[:test_per_class]
        train += members[test_per_class:test_per_class + per_class]
    return sorted(train), sorted(test)


def make_small_set(name: str, root: Path, per_class: int, seed: int, size: int,
                   test_per_class: int = TEST_PER_CLASS) -> tuple[Path, Path]:
    """root/train (``per_class`` images a class) and root/test (held out) of ``digits`` or ``fashion``
    (Fashion-MNIST's t10k part, so never an image that pre-training on its train part saw)."""
    images, labels, classes = digits() if name == "digits" else fashion_mnist("t10k")
    train, test = sample_split(labels, per_class, test_per_class, seed)
    if not (root / "test").is_dir():
        write_folder(root / "test", images, labels, classes, test, size)
    if not (root / "train").is_dir():
        write_folder(root / "train", images, labels, classes, train, size)
    return root / "train", root / "test"


def run_train(*options: str) -> subprocess.CompletedProcess:
    """``python train.py OPTIONS`` in a process of its own; stops the benchmark on an error."""
    done = subprocess.run([sys.executable, str(ROOT / "train.py"), *options], capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"train.py {' '.join(options)} failed:\n{done.stderr[-3000:]}")
    return done


def pretrain(work: Path, size: int, per_class: int, epochs: int, device: str) -> Path:
    """A vit-tiny trained from random weights on ``per_class`` Fashion-MNIST training images a class
    (with train.py, as a user would); returns its best/ checkpoint, for ``train.py --model DIR``."""
    best = work / "pretrained" / "best"
    if (best / "training_info.json").is_file():
        return best
    images, labels, classes = fashion_mnist("train")
    chosen, _ = sample_split(labels, per_class, 0, seed=0)
    data = write_folder(work / "pretrain-data", images, labels, classes, chosen, size)
    run_train("--data", str(data), "--output-dir", str(work / "pretrained"), "--overwrite", "--model",
              "vit-tiny", "--no-pretrained", "--image-size", str(size), "--epochs", str(epochs),
              "--batch-size", "64", "--no-flip", "--device", device)
    info = json.loads((best / "training_info.json").read_text())
    print(f"pre-trained vit-tiny on {len(chosen)} Fashion-MNIST images: val acc {info['val_acc']:.3f}",
          flush=True)
    return best


def evaluate(checkpoint: Path, test: Path, device: str) -> dict:
    """Top-1 and macro-F1 of ``checkpoint`` on the test folder, as ``train.py --evaluate`` prints them."""
    done = run_train("--evaluate", "--model", str(checkpoint), "--data", str(test), "--output-dir",
                     str(checkpoint.parent / "test-evaluation"), "--device", device)
    match = SCORE.search(done.stdout)
    if not match:
        sys.exit(f"no score in train.py --evaluate's output:\n{done.stdout[-2000:]}")
    return {"test_acc": float(match[1]), "test_macro_f1": float(match[2])}


@cache
def has_recipe_option() -> bool:
    return "--recipe" in run_train("--help").stdout


def recipe_options(recipe: str) -> list[str]:
    """train.py's options for ``recipe``: --recipe NAME where train.py has it; without it only ``fixed``
    (today's behaviour) can run."""
    if has_recipe_option():
        return ["--recipe", recipe]
    if recipe != "fixed":
        sys.exit(f"this train.py has no --recipe option: only the recipes fixed and hf can run, not {recipe}")
    return []


def train_hf(train: Path, out: Path, model: str, pretrained: bool, args: argparse.Namespace,
             seed: int) -> Path:
    """transformers.Trainer with the Hugging Face example's recipe (lr 5e-5, flip and random-resized crop),
    on the same 80/20 split of ``train`` that train.py makes; returns its model as a checkpoint folder
    (the Trainer's save plus our preprocessing) for train.py --evaluate."""
    sys.path.insert(0, str(ROOT))
    from anchors import train_with_trainer

    from vitclassifier.data.folders import load_splits
    from vitclassifier.model.vit import create_model
    final = out / "trainer" / "final"
    if (final / "preprocessor_config.json").is_file():
        return final
    labels, train_part, val_part = load_splits(train, 0.2, seed)
    options = argparse.Namespace(model=model, no_pretrained=not pretrained, image_size=args.image_size,
                                 seed=seed, batch_size=32, epochs=args.epochs, num_workers=0,
                                 device=args.device)
    train_with_trainer(options, labels, train_part, val_part, 5e-5, out)
    _, prep = create_model(model, labels, pretrained=pretrained, image_size=args.image_size)
    prep.to_image_processor().save_pretrained(final)
    return final


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (train.py runs): unlike wall time, it barely
    moves when other jobs share the machine, so fixed and auto compare on a loaded machine too (with
    OMP_NUM_THREADS=1, which keeps threads from spinning while they wait for a core)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def grid() -> list[list[str]]:
    """The grid search's settings (--recipe fixed with each): LR x epochs x flip."""
    return [["--lr", lr, "--epochs", epochs, *flip] for lr in ("5e-5", "2e-4", "1e-3")
            for epochs in ("10", "20") for flip in ([], ["--no-flip"])]


def run_one(args: argparse.Namespace, case: str, per_class: int, seed: int, recipe: str,
            setting: tuple[str, ...] = ()) -> dict:
    """Train one recipe (``grid``: --recipe fixed with ``setting``) on one sample and score it on the
    held-out test folder."""
    name, transfer = CASES[case]
    train, test = make_small_set(name, args.work / "data" / f"{name}-{per_class}-seed{seed}", per_class,
                                 seed, args.image_size)
    model = str(pretrain(args.work, args.image_size, args.pretrain_per_class, args.pretrain_epochs,
                         args.device)) if transfer else "vit-tiny"
    slug = "".join(setting).replace("--", "-")
    out = args.work / "runs" / f"{case.replace(':', '-')}-{per_class}-seed{seed}-{recipe}{slug}"
    start, cpu_start = time.perf_counter(), cpu_seconds()
    if recipe == "hf":
        checkpoint = train_hf(train, out, model, transfer, args, seed)
    else:
        options = (["--epochs", str(args.epochs)] if recipe == "fixed" else list(setting)) + \
            recipe_options("fixed" if recipe == "grid" else recipe)
        if not (out / "best" / "training_info.json").is_file():
            run_train("--data", str(train), "--output-dir", str(out), "--overwrite", "--model", model,
                      *([] if transfer else ["--no-pretrained"]), "--image-size", str(args.image_size),
                      "--seed", str(seed), "--device", args.device, *options)
        checkpoint = out / "best"
    seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu_start
    result = {"case": case, "per_class": per_class, "seed": seed, "recipe": recipe, "seconds": seconds,
              "cpu_seconds": cpu, **evaluate(checkpoint, test, args.device)}
    if recipe == "grid":
        info = json.loads((checkpoint / "training_info.json").read_text())
        result.update(setting=" ".join(setting), val_acc=info["val_acc"])
    print(json.dumps(result), flush=True)
    return result


def print_table(results: list[dict]) -> None:
    """One row per (case, images per class, recipe): test top-1 as mean and spread over the seeds."""
    print("\n| case | images per class | recipe | test top-1 (mean ± SD over seeds) | seeds | seconds | "
          "CPU s |")
    print("|---|---|---|---|---|---|---|")
    results = [r for r in results if r["recipe"] != "grid"] + best_of_grid(results)
    keys = sorted({(r["case"], r["per_class"], r["recipe"]) for r in results},
                  key=lambda key: (key[0], key[1], TABLE_ORDER.index(key[2])))
    for case, per_class, recipe in keys:
        runs = [r for r in results if (r["case"], r["per_class"], r["recipe"]) == (case, per_class, recipe)]
        accs = np.array([r["test_acc"] for r in runs]) * 100
        spread = f" ± {accs.std(ddof=1):.1f}" if len(accs) > 1 else ""
        print(f"| {case} | {per_class} | {recipe} | {accs.mean():.1f}%{spread} | {len(runs)} | "
              f"{np.mean([r['seconds'] for r in runs]):.0f} | "
              f"{np.mean([r['cpu_seconds'] for r in runs]):.0f} |")


def best_of_grid(results: list[dict]) -> list[dict]:
    """Per sample (case, images per class, seed): the grid's setting with the best validation accuracy
    (what a user's grid search would keep), and the one best on the test images (an oracle)."""
    best = []
    for key in sorted({(r["case"], r["per_class"], r["seed"]) for r in results if r["recipe"] == "grid"}):
        runs = [r for r in results if r["recipe"] == "grid" and (r["case"], r["per_class"], r["seed"]) == key]
        best.append({**max(runs, key=lambda r: r["val_acc"]), "recipe": "grid, best by val"})
        best.append({**max(runs, key=lambda r: r["test_acc"]), "recipe": "grid, best on test"})
    return best


def listed(kind: Callable[[str], object]) -> Callable[[str], list]:
    """An argparse type for a comma-separated list of ``kind``."""
    return lambda text: [kind(item) for item in text.split(",") if item]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("small-data-bench"), help="scratch folder")
    parser.add_argument("--cases", type=listed(str), default=list(CASES), help=f"of {', '.join(CASES)}")
    parser.add_argument("--per-class", type=listed(int), default=[10, 25, 50, 100],
                        help="training images per class (comma-separated)")
    parser.add_argument("--seeds", type=listed(int), default=[0, 1, 2], help="sample and training seeds")
    parser.add_argument("--recipes", type=listed(str), default=["fixed", "auto", "hf"],
                        help="of fixed, auto (train.py --recipe), hf (transformers.Trainer) and grid (fixed "
                             "with each LR x epochs x flip of grid())")
    parser.add_argument("--epochs", type=int, default=10, help="epochs of fixed and hf (train.py's default)")
    parser.add_argument("--image-size", type=int, default=32, help="pixels; the images are upscaled to it")
    parser.add_argument("--pretrain-per-class", type=int, default=1000, help="Fashion-MNIST images a class")
    parser.add_argument("--pretrain-epochs", type=int, default=10, help="epochs of the pre-training")
    parser.add_argument("--device", default="auto", help="as train.py's --device")
    parser.add_argument("--json", type=Path, help="also write every result to this file")
    args = parser.parse_args(argv)
    for name, chosen, known in (("--cases", args.cases, CASES), ("--recipes", args.recipes, RECIPES)):
        if unknown := sorted(set(chosen) - set(known)):
            parser.error(f"{name}: unknown {', '.join(unknown)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    results = [run_one(args, case, per_class, seed, recipe, tuple(setting)) for case in args.cases
               for per_class in args.per_class for seed in args.seeds for recipe in args.recipes
               for setting in (grid() if recipe == "grid" else [()])]
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    print_table(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
