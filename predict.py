"""Predict labels with confidences for new images using a trained checkpoint.

    python predict.py --image sample.jpg --top-k 3
    python predict.py --image photos/ "more/*.png" --json predictions.json --visualize grid.png

Preprocessing is classifier.eval_transform, the very function validation uses, built from
the preprocessing saved in the checkpoint.
"""
from __future__ import annotations

import argparse
import glob
import json
import sys
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from torchvision.transforms import v2

from checkpoint import load_checkpoint, read_info
from classifier import (HelpFormatter, ImageFolderDataset, Preprocessing, UserError, collate_skipping_bad,
                        eval_transform, list_images)
from devices import (PRECISION_HELP, PRECISIONS, autocast, autocast_dtype, keep_freed_memory, pick_device,
                     run_in_bf16)
from export import load_exported, quantize_int8
from openvino_backend import OpenVinoModel

MAX_PICTURES = 24  # --visualize draws at most this many images, to keep the figure readable
UNKNOWN = "unknown"  # the answer below --min-confidence
EXPORTED = (".onnx", ".xml")  # --model files made by export.py; anything else is a checkpoint directory


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Predict the top-k labels of images with a trained ViT classifier.",
                                formatter_class=HelpFormatter)
    p.add_argument("--image", nargs="+", required=True, metavar="PATH",
                   help="image files, folders (searched recursively) or glob patterns")
    p.add_argument("--model", type=Path, default=Path("checkpoints/best"),
                   help="checkpoint directory, or a model made by export.py: .onnx (run with onnxruntime) or "
                        ".xml (OpenVINO IR, e.g. --format openvino-int8: the fastest on CPUs)")
    p.add_argument("--top-k", type=int, default=3, help="how many labels to show per image")
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass")
    p.add_argument("--min-confidence", type=float, default=0.0, metavar="P",
                   help="answer 'unknown' (with the best guess shown) when the top confidence is below P (0-1)")
    p.add_argument("--tta", action="store_true",
                   help="test-time augmentation: average over the image, its mirror and a zoomed centre "
                        "(and its mirror); 4x the compute")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"], help="where to run")
    p.add_argument("--precision", default="auto", choices=PRECISIONS, help=PRECISION_HELP)
    p.add_argument("--quantize", action="store_true",
                   help="CPU only: int8 weights for every linear layer (dynamic quantization); the fastest on "
                        "CPUs without an export step (export.py --format openvino-int8 is faster still); "
                        "check agreement with benchmarks/speed.py")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the model first (20-30 s): pays for folders of thousands of images")
    p.add_argument("--runtime", default="pytorch", choices=["pytorch", "openvino"],
                   help="openvino (CPU, needs `pip install openvino`): convert the model in memory (a few "
                        "seconds) and run it with OpenVINO, bf16 where the CPU has it; batches about as fast "
                        "as --quantize, without int8 rounding; for int8 in OpenVINO export the model with "
                        "export.py --format openvino-int8")
    p.add_argument("--json", metavar="FILE", help="also write the predictions as JSON to FILE ('-': stdout)")
    p.add_argument("--visualize", type=Path, metavar="OUT.png",
                   help=f"save the images with their top-k labels and confidence bars (first {MAX_PICTURES})")
    args = p.parse_args(argv)
    if args.top_k < 1:
        p.error("--top-k must be at least 1")
    if args.batch_size < 1:
        p.error("--batch-size must be at least 1")
    if not 0 <= args.min_confidence <= 1:
        p.error("--min-confidence is a probability from 0 to 1")
    if args.runtime == "openvino" and (args.quantize or args.compile or args.device not in ("auto", "cpu")):
        p.error("--runtime openvino runs on the CPU and does its own optimising: leave out --quantize, --compile "
                "and --device cuda/mps (for int8 with OpenVINO, export once: python export.py --format openvino-int8)")
    if args.model.suffix in EXPORTED and (args.quantize or args.compile or args.runtime != "pytorch"):
        p.error(f"--model {args.model} is an export and runs as it was exported: leave out --quantize, --compile "
                f"and --runtime")
    if args.model.suffix == ".xml" and args.device not in ("auto", "cpu"):
        p.error(f"--model {args.model} is an OpenVINO model, which runs on the CPU: leave out --device")
    return args


def expand_inputs(inputs: list[str]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Files, folders and globs -> (image paths in order, [(input, reason)] for inputs that match nothing)."""
    paths, missing = [], []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = list_images(path)
            paths += found
            if not found:
                missing.append((item, "folder has no image files"))
        elif path.is_file():
            paths.append(path)
        elif glob.has_magic(item):
            matches = sorted(Path(m) for m in glob.glob(item, recursive=True) if Path(m).is_file())
            paths += matches
            if not matches:
                missing.append((item, "pattern matches no files"))
        else:
            missing.append((item, "file not found"))
    return list(dict.fromkeys(paths)), missing  # drop repeats, keep order


def tta_views(images: torch.Tensor) -> list[torch.Tensor]:
    """The views --tta averages over: the image, its mirror, its centre zoomed by 1/0.875, and that mirrored."""
    size = images.shape[-1]
    centre = v2.functional.center_crop(images, [round(size * 0.875)] * 2)
    zoomed = torch.nn.functional.interpolate(centre, size=(size, size), mode="bilinear", antialias=True)
    return [images, images.flip(-1), zoomed, zoomed.flip(-1)]


def prepare_model(model: torch.nn.Module, device: torch.device, precision: str = "fp32", quantize: bool = False,
                  compile_model: bool = False, runtime: str = "pytorch") -> tuple[torch.nn.Module, torch.dtype | None]:
    """The model made fast for inference on ``device``, and the dtype to autocast to (None: fp32)."""
    if runtime == "openvino":
        if device.type != "cpu":
            raise UserError("--runtime openvino runs on the CPU; add --device cpu, or leave --runtime out on a GPU")
        return OpenVinoModel.from_torch(model, bf16=autocast_dtype(device, precision) == torch.bfloat16), None
    if quantize:
        if device.type != "cpu":
            raise UserError("--quantize uses int8 CPU kernels; on a GPU use --precision bf16 or fp16 instead")
        return quantize_int8(model.eval()), None
    model.to(device).eval()
    dtype = autocast_dtype(device, precision)
    run_in_bf16(model, device, dtype, training=False)
    if compile_model:
        from torch._inductor import config as inductor_config
        inductor_config.freezing = True  # inference only: constant-fold the weights into the kernels
        model = torch.compile(model)
    return model, dtype


def prediction_device(model_path: Path, device: str, runtime: str = "pytorch") -> torch.device:
    """Where ``model_path`` runs: OpenVINO (an .xml export, or --runtime openvino) always on the CPU."""
    return pick_device("cpu" if runtime == "openvino" or model_path.suffix == ".xml" else device)


def load_for_prediction(path: Path, device: torch.device, precision: str = "auto", quantize: bool = False,
                        compile_model: bool = False, runtime: str = "pytorch"):
    """A checkpoint directory, or an .onnx / .xml export, ready to predict with: (model, preprocessing,
    labels, calibrated softmax temperature, autocast dtype or None)."""
    if path.suffix in EXPORTED:  # onnxruntime or OpenVINO runs the exported graph as it is
        model, prep, labels = load_exported(path, autocast_dtype(device, precision) == torch.bfloat16)
        return model, prep, labels, float(model.meta.get("temperature", 1.0)), None
    model, prep, labels = load_checkpoint(path)
    temperature = read_info(path).get("temperature", 1.0)  # calibrated after training
    model, dtype = prepare_model(model, device, precision, quantize, compile_model, runtime)
    return model, prep, labels, temperature, dtype


def predict(model: torch.nn.Module, prep: Preprocessing, labels: list[str], paths: list[Path],
            top_k: int, batch_size: int, device: torch.device, temperature: float = 1.0, tta: bool = False,
            min_confidence: float = 0.0, dtype: torch.dtype | None = None) -> tuple[list[dict], list[tuple[str, str]]]:
    """Top-k (label, confidence) for every readable image; unreadable ones come back as (path, reason).

    Confidences are softmax(logits / temperature), the checkpoint's calibration. ``label`` is the top
    label, or "unknown" when its confidence is below ``min_confidence``. ``dtype``: autocast precision."""
    dataset = ImageFolderDataset([(path, 0) for path in paths], eval_transform(prep), prep.resize_size)
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=collate_skipping_bad,
                        pin_memory=device.type == "cuda")
    results, failures = [], []
    k = min(top_k, len(labels))
    with torch.inference_mode():
        for images, _, good_paths, bad in loader:
            failures += bad
            if images is None:
                continue
            images = images.to(device, non_blocking=True)
            with autocast(device, dtype):
                logits = [model(pixel_values=view).logits.float() for view in (tta_views(images) if tta else [images])]
            probabilities = torch.stack([(view / temperature).softmax(dim=1) for view in logits]).mean(dim=0)
            confidences, indices = probabilities.topk(k, dim=1)
            for path, conf_row, index_row in zip(good_paths, confidences.tolist(), indices.tolist()):
                results.append({"path": path,
                                "label": labels[index_row[0]] if conf_row[0] >= min_confidence else UNKNOWN,
                                "predictions": [{"label": labels[i], "confidence": round(c, 6)}
                                                for c, i in zip(conf_row, index_row)]})
    return results, failures


def print_table(results: list[dict], file=sys.stdout) -> None:
    width = max((len(p["label"]) for r in results for p in r["predictions"]), default=5)
    for result in results:
        unsure = result.get("label") == UNKNOWN
        print(f"{result['path']}{'  -> unknown: no label is confident enough' if unsure else ''}", file=file)
        for rank, p in enumerate(result["predictions"], 1):
            bar = "#" * round(p["confidence"] * 20)
            print(f"  {rank}. {p['label']:<{width}}  {p['confidence'] * 100:6.2f}%  {bar}", file=file)


def visualize(results: list[dict], out: Path) -> None:
    """One row per image: the picture, and its top-k labels as horizontal confidence bars."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from images import load_image

    shown = results[:MAX_PICTURES]
    figure, axes = plt.subplots(len(shown), 2, figsize=(8, 2.2 * len(shown)), squeeze=False,
                                gridspec_kw={"width_ratios": [1, 1.6]})
    for (image_axis, bar_axis), result in zip(axes, shown):
        image_axis.imshow(load_image(result["path"]))
        image_axis.set_title(Path(result["path"]).name, fontsize=9)
        image_axis.axis("off")
        names = [p["label"] for p in result["predictions"]][::-1]
        confidences = [p["confidence"] * 100 for p in result["predictions"]][::-1]
        bars = bar_axis.barh(names, confidences, color=["#9ab"] * (len(names) - 1) + ["#2a7"])
        bar_axis.bar_label(bars, fmt="%.1f%%", padding=3, fontsize=9)
        bar_axis.set_xlim(0, 115)
        bar_axis.set_xlabel("confidence (%)")
        bar_axis.spines[["top", "right"]].set_visible(False)
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=100)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    keep_freed_memory()
    try:
        device = prediction_device(args.model, args.device, args.runtime)
        model, prep, labels, temperature, dtype = load_for_prediction(args.model, device, args.precision, args.quantize,
                                                                      args.compile, args.runtime)
        paths, failures = expand_inputs(args.image)
        if args.top_k > len(labels):
            print(f"note: --top-k {args.top_k} capped at the model's {len(labels)} classes", file=sys.stderr)
        results, bad = predict(model, prep, labels, paths, args.top_k, args.batch_size, device, temperature,
                               args.tta, args.min_confidence, dtype)
        failures += bad
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nInterrupted; nothing was written", file=sys.stderr)
        return 130
    print_table(results, file=sys.stderr if args.json == "-" else sys.stdout)
    for path, reason in failures:
        print(f"error: {path}: {reason}", file=sys.stderr)
    if args.json:
        report = json.dumps({"model": str(args.model), "results": results,
                             "errors": [{"path": p, "error": r} for p, r in failures]}, indent=2)
        if args.json == "-":
            print(report)
        else:
            Path(args.json).write_text(report + "\n")
    if args.visualize and results:
        visualize(results, args.visualize)
        print(f"Saved the picture to {args.visualize}", file=sys.stderr)
    if failures:
        print(f"{len(failures)} of {len(results) + len(failures)} input(s) could not be predicted", file=sys.stderr)
    return 1 if failures or not results else 0


if __name__ == "__main__":
    sys.exit(main())
