"""Does ``classifier.py --suggest-labels`` pick better images to label than chance? (issue 31)

    python classifier.py --generate-data --per-class 40 --image-size 32 --out /tmp/active/data
    python benchmarks/active.py --data /tmp/active/data --work /tmp/active/work

Simulates the loop on a labelled class folder, the folder names being the oracle: a fixed
validation set (--val-per-class per class) is set aside; training starts from --start images per
class; then --rounds rounds of --per-round labels each, picked at random or by --suggest-labels
(the real command, with the round's model). Every round trains with the real train.py (--recipe
fixed) on a label file with a split column, so both strategies are scored on the same validation
images; the accuracy is the best epoch's, as train.py reports it (the same for both). One table
row per round and strategy, means over --seeds; the last line compares the training labels
(the validation set, the same for both, is not counted).
"""
from __future__ import annotations

import argparse
import csv
import json
import random
import shutil
import sys
from pathlib import Path
from statistics import mean

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import classifier  # noqa: E402
import train  # noqa: E402
from vitclassifier.data.folders import list_images  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="a class folder (the oracle)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/active-bench"),
                        help="a new or earlier work folder (finished runs are reused)")
    parser.add_argument("--start", type=int, default=10, help="labelled images per class at first")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--per-round", type=int, default=20, help="labels added per round")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--val-per-class", type=int, default=10)
    parser.add_argument("--model", default="small", help="train.py --model with --no-pretrained (vit-tiny: "
                        "12 layers), or small: a 4-layer ViT (width 64, 8-px patches) written into --work")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=8)
    return parser.parse_args(argv)


def copy_data(data: Path, work: Path) -> dict[Path, str]:
    """The data copied under work/images (label files read only images inside their folder); {image:
    class}."""
    oracle = {}
    for path in list_images(data):
        target = work / "images" / path.relative_to(data)
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            shutil.copy(path, target)
        oracle[target] = path.relative_to(data).parts[0]
    return oracle


def split(oracle: dict[Path, str], args: argparse.Namespace, seed: int) -> tuple[list[Path], list[Path]]:
    """(fixed validation images, first labelled images), drawn per class with ``seed``."""
    rng = random.Random(seed)
    val, start = [], []
    for name in sorted(set(oracle.values())):
        members = sorted(path for path, label in oracle.items() if label == name)
        rng.shuffle(members)
        val += members[:args.val_per_class]
        start += members[args.val_per_class:args.val_per_class + args.start]
    return val, start


def write_labels(path: Path, oracle: dict[Path, str], labelled: list[Path], val: list[Path]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "label", "split"])
        writer.writerows([p.relative_to(path.parent).as_posix(), oracle[p], part]
                         for part, group in (("train", labelled), ("val", val)) for p in group)


def small_vit(work: Path, image_size: int) -> Path:
    """A small ViT from random weights, saved as a Hub checkpoint is (offline, and fast on CPUs)."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor
    folder = work / "small-vit"
    if not (folder / "config.json").is_file():
        config = ViTConfig(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=128,
                           image_size=image_size, patch_size=8, num_labels=2)
        ViTForImageClassification(config).save_pretrained(folder)
        ViTImageProcessor(size={"height": image_size, "width": image_size}, image_mean=[0.5] * 3,
                          image_std=[0.5] * 3).save_pretrained(folder)
    return folder


def train_round(labels: Path, run: Path, args: argparse.Namespace, seed: int) -> float:
    """Train on ``labels`` (train.py, in this process); the validation accuracy."""
    if not (run / "best" / "training_info.json").is_file():
        model = ["--model", str(small_vit(args.work, args.image_size))] if args.model == "small" else [
            "--model", args.model, "--no-pretrained"]
        code = train.main(["--data", str(labels), "--output-dir", str(run), *model,
                           "--image-size", str(args.image_size),
                           "--epochs", str(args.epochs), "--batch-size", "16", "--num-workers", "0",
                           "--recipe", "fixed", "--seed", str(seed), "--no-rotate", "--no-color-jitter"])
        assert code == 0, f"train.py failed on {labels}"
    return json.loads((run / "best" / "training_info.json").read_text())["val_acc"]


def suggested(labels: Path, run: Path, out: Path, budget: int) -> list[Path]:
    """--suggest-labels' picks over work/images, the labelled and validation images left out."""
    code = classifier.main(["--suggest-labels", str(labels.parent / "images"), "--labelled", str(labels),
                            "--model", str(run / "best"), "--budget", str(budget), "--suggest-out", str(out)])
    assert code == 0, "classifier.py --suggest-labels failed"
    with open(out / "suggestions.csv", newline="") as handle:
        return [(out / row["path"]).resolve() for row in csv.DictReader(handle)]


def simulate(oracle: dict[Path, str], args: argparse.Namespace, seed: int, strategy: str) -> list[tuple]:
    """[(labels, accuracy)] per round of one strategy and seed."""
    val, labelled = split(oracle, args, seed)
    rng, rows = random.Random(seed + 1000), []
    for number in range(args.rounds + 1):
        name = f"s{seed}-{strategy}-r{number}"
        labels = args.work / f"{name}.csv"
        write_labels(labels, oracle, labelled, val)
        run = args.work / "runs" / name
        accuracy = train_round(labels, run, args, seed)
        rows.append((len(labelled), accuracy))
        print(f"seed {seed} {strategy:>6} round {number}: {len(labelled)} training labels, accuracy "
              f"{accuracy * 100:.1f}%", flush=True)
        if number == args.rounds:
            break
        taken = set(labelled) | set(val)
        if strategy == "random":
            pool = sorted(path for path in oracle if path not in taken)
            picks = rng.sample(pool, min(args.per_round, len(pool)))
        else:
            picks = suggested(labels, run, args.work / f"suggestions-s{seed}", args.per_round)
        labelled += [oracle_key(oracle, path) for path in picks]
    return rows


def oracle_key(oracle: dict[Path, str], path: Path) -> Path:
    """The oracle's own Path for a resolved path."""
    return next(key for key in oracle if key.resolve() == path.resolve())


def report(results: dict[str, list[list[tuple]]]) -> None:
    """One row per round and strategy (means over seeds), then the label counts compared."""
    print("\n| round | strategy | training labels | accuracy (mean over seeds) | per seed |")
    print("|---|---|---|---|---|")
    means = {}
    for strategy, runs in results.items():
        means[strategy] = [(runs[0][r][0], mean(run[r][1] for run in runs)) for r in range(len(runs[0]))]
        for r, (labels, accuracy) in enumerate(means[strategy]):
            seeds = ", ".join(f"{run[r][1] * 100:.1f}" for run in runs)
            print(f"| {r} | {strategy} | {labels} | {accuracy * 100:.1f}% | {seeds} |")
    final_labels, final = means["random"][-1]
    reached = next((labels for labels, accuracy in means["ours"] if accuracy >= final), None)
    if reached is None:
        print(f"did not reach random selection's final accuracy ({final * 100:.1f}%) with up to "
              f"{means['ours'][-1][0]} labels")
    else:
        print(f"reached random selection's final accuracy with {reached} of {final_labels} labels "
              f"({reached / final_labels * 100:.0f} %)")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    oracle = copy_data(args.data, args.work)
    results = {"random": [], "ours": []}
    for seed in range(args.seeds):
        for strategy in results:
            results[strategy].append(simulate(oracle, args, seed, strategy))
    report(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
