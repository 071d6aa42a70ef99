"""Are the explanations faithful, class-specific, about the model, and cheap? Four figures.

    python benchmarks/explain.py                  # trains the offline quick-start model first (minutes)
    python benchmarks/explain.py --model checkpoints/best --images photos/

  * deletion test (Petsiuk et al. 2018): blank the 20% most highlighted pixels of each image (set
    them to the image's mean colour): how much does the predicted class's probability drop, against
    blanking 20% of a random map of 8-pixel blocks, and against the 20% least highlighted pixels?
    Targets: at least 2x and 3x those drops;
  * class specificity: the Spearman rank correlation of an image's top-1 and top-2 maps, averaged
    (target at most 0.8; a class-agnostic map gives 1.0);
  * randomisation test (Adebayo et al. 2018): the Spearman correlation of the trained model's map
    with the map of the same model re-initialised with random weights, for the same class (target
    at most 0.5; an edge detector or a centred blob gives 1.0);
  * cost: predict.py's batched prediction against predict.py --explain with 1 and k classes, pictures
    and .npy maps written (targets: at most 3x and about 3k x).

Deletion works on the model's input (after resize and centre crop), where the maps are measured;
correlations on the patch grid, where the maps are computed (upsampling would add correlation of
its own). Both methods are measured; rollout is there as the class-agnostic baseline. Without
--model, the README's offline quick start is trained (vit-tiny from random weights at 48 px with
8-px patches, 7 epochs on the generated shapes, --per-class of them) and tested on shapes drawn
with another seed.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from vitclassifier.data.dataset import ImageFolderDataset, collate_skipping_bad  # noqa: E402
from vitclassifier.data.synthetic import DEFAULT_CLASSES, generate_data  # noqa: E402
from vitclassifier.data.transforms import eval_transform  # noqa: E402
from vitclassifier.devices import autocast, keep_freed_memory  # noqa: E402
from vitclassifier.inference.explain import explain_to_folder  # noqa: E402
from vitclassifier.inference.loading import load_for_prediction, prepare_model  # noqa: E402
from vitclassifier.inference.predict import expand_inputs, predict  # noqa: E402
from vitclassifier.model.relevance import METHODS, explain_batch  # noqa: E402

FRACTION = 0.2  # of the pixels blanked
BLOCK = 8  # pixels per side of the random map's cells
QUICK_START = ["--model", "vit-tiny", "--no-pretrained", "--image-size", "48", "--epochs", "7",
               "--batch-size", "64", "--no-rotate", "--no-color-jitter"]  # the README's offline command


def quick_start_model(work: Path, per_class: int) -> Path:
    """The README's offline quick start, trained into ``work``; returns its best/ checkpoint."""
    data, run = work / "shapes", work / "run"
    if not (run / "best").is_dir():
        generate_data(data, DEFAULT_CLASSES.split(","), per_class, 64, 0, work)
        subprocess.run([sys.executable, str(ROOT / "train.py"), "--data", str(data), "--output-dir", str(run),
                        *QUICK_START], check=True)
    return run / "best"


def held_out_images(work: Path, count: int) -> list[Path]:
    """``count`` shapes drawn with another seed than the training set's."""
    classes = DEFAULT_CLASSES.split(",")
    folder = work / "held-out"
    if not folder.is_dir():
        generate_data(folder, classes, -(-count // len(classes)), 64, 1, work / "held-out-samples")
    return expand_inputs([str(folder)])[0][:count]


def model_inputs(loaded, paths: list[Path], batch_size: int):
    """Batches of (model input) as predict.py builds them."""
    dataset = ImageFolderDataset([(path, 0) for path in paths], eval_transform(loaded.prep),
                                 loaded.prep.resize_size)
    for images, _, _, _ in torch.utils.data.DataLoader(dataset, batch_size=batch_size,
                                                       collate_fn=collate_skipping_bad):
        if images is not None:
            yield images.to(loaded.device)


def probabilities(loaded, model, pixels: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode(), autocast(loaded.device, loaded.dtype):
        return (model(pixel_values=pixels).logits.float() / loaded.temperature).softmax(dim=1)


def extreme_mask(score: torch.Tensor, largest: bool) -> torch.Tensor:
    """(batch, H, W) True on the FRACTION of each image's pixels with the largest (smallest) score."""
    flat = score.flatten(1)
    count = round(FRACTION * flat.shape[1])
    chosen = flat.topk(count, dim=1, largest=largest).indices
    return torch.zeros_like(flat, dtype=torch.bool).scatter_(1, chosen, True).view_as(score)


def blanked(pixels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``pixels`` with the masked ones set to each image's mean colour."""
    mean = pixels.mean(dim=(2, 3), keepdim=True).expand_as(pixels)
    return torch.where(mask[:, None], mean, pixels)


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman's rank correlation of each row of ``a`` with the same row of ``b`` (NaN where a map
    is constant)."""
    ranks = [x.flatten(1).argsort(dim=1).argsort(dim=1).float() for x in (a, b)]
    ranks = [r - r.mean(dim=1, keepdim=True) for r in ranks]
    return (ranks[0] * ranks[1]).sum(1) / (ranks[0].norm(dim=1) * ranks[1].norm(dim=1))


def constant(maps: torch.Tensor) -> torch.Tensor:
    return maps.flatten(1).std(dim=1) == 0


def batch_figures(loaded, random_model, pixels: torch.Tensor, method: str, generator) -> dict:
    """The per-image numbers of one batch: drops, and the two correlations."""
    model, size = loaded.model, pixels.shape[-1]
    explained = explain_batch(model, pixels, lambda logits: logits.topk(2, dim=1).indices, method,
                              loaded.dtype)
    top1 = explained.classes[:, :1].to(pixels.device)
    on_input = F.interpolate(explained.maps[:, :1], size=(size, size), mode="bilinear")[:, 0]
    on_input = on_input.to(pixels.device)
    blocks = torch.rand(len(pixels), 1, -(-size // BLOCK), -(-size // BLOCK), generator=generator)
    random_map = F.interpolate(blocks, size=(size, size), mode="nearest")[:, 0].to(pixels.device)
    before = probabilities(loaded, model, pixels).gather(1, top1)[:, 0]
    drops = {}
    for name, mask in (("top", extreme_mask(on_input, True)), ("random", extreme_mask(random_map, True)),
                       ("least", extreme_mask(on_input, False))):
        drops[name] = before - probabilities(loaded, model, blanked(pixels, mask)).gather(1, top1)[:, 0]
    first, second = explained.maps[:, 0], explained.maps[:, 1]
    specific = spearman(first, second)
    specific[constant(first) | constant(second)] = float("nan")
    chosen = explained.classes[:, :1]
    other = explain_batch(random_model, pixels, lambda logits: chosen.to(logits.device), method, loaded.dtype)
    randomised = spearman(first, other.maps[:, 0])
    randomised[constant(first) | constant(other.maps[:, 0])] = float("nan")
    drops = {f"drop_{name}": values.cpu() for name, values in drops.items()}
    return {**drops, "specificity": specific, "randomised": randomised}


def reinitialised(loaded, seed: int):
    """The same architecture with fresh random weights, prepared as predict.py prepares the model."""
    torch.manual_seed(seed)
    model = type(loaded.model)(loaded.model.config)
    precision = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[loaded.dtype]
    return prepare_model(model, loaded.device, precision)[0]


def faithfulness(loaded, paths: list[Path], method: str, batch_size: int, seed: int) -> dict:
    random_model, generator = reinitialised(loaded, seed), torch.Generator().manual_seed(seed)
    parts = [batch_figures(loaded, random_model, pixels, method, generator)
             for pixels in model_inputs(loaded, paths, batch_size)]
    joined = {name: torch.cat([part[name] for part in parts]) for name in parts[0]}
    figures = {name: float(np.nanmean(values.numpy())) for name, values in joined.items()}
    for other in ("random", "least"):  # no ratio where blanking raised the probability
        drop = figures[f"drop_{other}"]
        figures[f"deletion_vs_{other}"] = figures["drop_top"] / drop if drop > 0 else None
    figures["images"] = len(joined["drop_top"])
    return figures


def cost(loaded, paths: list[Path], k: int, method: str, batch_size: int, repeats: int) -> dict:
    """Median seconds of predict.py's prediction and of --explain with 1 and k classes, in turns."""
    work = Path(tempfile.mkdtemp(prefix="explain-cost-"))
    runs = {"predict": lambda: predict(loaded, paths, k, batch_size),
            "explain_1": lambda: explain_to_folder(loaded, paths, 1, batch_size, method, work / "one"),
            f"explain_{k}": lambda: explain_to_folder(loaded, paths, k, batch_size, method, work / "k")}
    times: dict[str, list[float]] = {name: [] for name in runs}
    try:
        for run in runs.values():  # warm-up
            run()
        for _ in range(repeats):
            for name, run in runs.items():
                start = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - start)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {name: statistics.median(values) for name, values in times.items()}


def compared(top: float, other: float, target: float) -> str:
    """How the top-20% drop compares with another drop, against a target ratio."""
    met = "met" if top >= target * max(other, 0.0) and top > 0 else "MISSED"
    if other <= 0:
        return f"{other:.3f} (blanking them raised the probability): {met}"
    return f"{other:.3f}: {top / other:.2f}x, target >= {target:g}: {met}"


def report(figures: dict, k: int) -> None:
    for method, f in figures["methods"].items():
        print(f"\n{method} ({f['images']} images)")
        print(f"  deletion test, mean drop of the predicted class's probability: top 20% blanked "
              f"{f['drop_top']:.3f}; random 8-px blocks {compared(f['drop_top'], f['drop_random'], 2)}; "
              f"least 20% {compared(f['drop_top'], f['drop_least'], 3)}")
        print(f"  class specificity: Spearman of the top-1 and top-2 maps {f['specificity']:.3f} "
              f"(target <= 0.8: {'met' if f['specificity'] <= 0.8 else 'MISSED'})")
        print(f"  randomisation test: Spearman with the re-initialised model's map {f['randomised']:.3f} "
              f"(target <= 0.5: {'met' if f['randomised'] <= 0.5 else 'MISSED'})")
    c = figures["cost"]
    one, many = c["explain_1"] / c["predict"], c[f"explain_{k}"] / c["predict"]
    print(f"\ncost ({figures['cost_images']} images, batch {figures['batch_size']}, pictures and maps "
          f"written): predict {c['predict']:.2f} s; explain 1 class {c['explain_1']:.2f} s = {one:.2f}x "
          f"(target <= 3: {'met' if one <= 3 else 'MISSED'}); {k} classes {c[f'explain_{k}']:.2f} s = "
          f"{many:.2f}x (target <= {3 * k}: {'met' if many <= 3 * k else 'MISSED'})")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", type=Path,
                   help="checkpoint directory (default: train the offline quick start)")
    p.add_argument("--images", nargs="+",
                   help="images, folders or globs (default: held-out generated shapes)")
    p.add_argument("--count", type=int, default=500, help="images for the faithfulness figures")
    p.add_argument("--cost-images", type=int, default=256, help="images for the cost figures")
    p.add_argument("--top-k", type=int, default=3, help="k of the cost figure")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=5, help="timed rounds of the cost figures (median)")
    p.add_argument("--per-class", type=int, default=1200, help="images per class of the quick start")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    p.add_argument("--seed", type=int, default=0, help="of the random maps and the re-initialised weights")
    p.add_argument("--work", type=Path,
                   help="where the quick start is trained and images drawn (default: a temporary folder)")
    p.add_argument("--json", type=Path, help="also write the figures as JSON")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    keep_freed_memory()
    work = args.work or Path(tempfile.mkdtemp(prefix="explain-bench-"))
    model_path = args.model or quick_start_model(work, args.per_class)
    paths = expand_inputs(args.images)[0] if args.images else held_out_images(work, max(args.count,
                                                                                         args.cost_images))
    loaded = load_for_prediction(model_path, torch.device(args.device), args.precision)
    print(f"{model_path}: {len(loaded.labels)} classes, {loaded.prep.image_size} px, patch "
          f"{loaded.model.config.patch_size}, {loaded.device}, {loaded.dtype or 'fp32'}")
    methods = {method: faithfulness(loaded, paths[:args.count], method, args.batch_size, args.seed)
               for method in METHODS}
    figures = {"model": str(model_path), "batch_size": args.batch_size, "cost_images": args.cost_images,
               "methods": methods,
               "cost": cost(loaded, paths[:args.cost_images], args.top_k, "relevance", args.batch_size,
                            args.repeats)}
    report(figures, args.top_k)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
