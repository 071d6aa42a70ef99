"""Export a trained checkpoint for serving: ONNX, TorchScript, int8 (dynamically quantized), or
OpenVINO IR, fp32 or int8 calibrated on your images (the fastest on CPUs).

    python export.py --model checkpoints/best --format onnx
    python export.py --model checkpoints/best --format int8 --check-images data/circle
    python export.py --model checkpoints/best --format openvino-int8 --calibration-images data

Every artefact carries what is needed to use it without this code: the label map and the
preprocessing, in a sidecar JSON (ARTEFACT.json) and inside the file itself (ONNX metadata_props,
the extra file "classifier.json" of a TorchScript archive, an OpenVINO IR's rt_info). Each export
is reloaded, compared with the PyTorch model on preprocessed images, and timed against it at batch 32.
predict.py runs .onnx and .xml exports as it runs checkpoints.
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn

from classifier import HelpFormatter, ImageFolderDataset, Preprocessing, UserError, eval_transform, list_images
from devices import cpu_supports_bf16

FORMATS = {"onnx": ".onnx", "torchscript": ".torchscript.pt", "int8": ".int8.pt",
           "openvino": ".openvino.xml", "openvino-int8": ".openvino-int8.xml"}
EXACT_FORMATS = ("onnx", "torchscript")  # fp32 as PyTorch runs it; the others round to int8 or bf16
TOLERANCE = 1e-3  # max |logit difference| accepted for the exact formats
MIN_AGREEMENT = 0.99  # top-1 agreement with PyTorch below which the other formats get a warning
CHECK_IMAGES = 64  # at most this many images from --check-images are compared
CALIBRATION_IMAGES = 64  # and from --calibration-images calibrate openvino-int8 (about 15 s for vit-small)
BENCH_BATCH = 32
EXTRAS = "pip install -r requirements-extras.txt"
# protobuf cannot hold more than 2 GiB in one file; bigger ONNX models keep their weights beside it
ONNX_SINGLE_FILE_BYTES = 1800 * 2**20


class LogitsOnly(nn.Module):
    """The classifier with a plain tensor in and out: exporters and tracing need that, not a ModelOutput."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values).logits


def describe(prep: Preprocessing, labels: list[str], source: Path, fmt: str, temperature: float) -> dict:
    """What the sidecar JSON and the embedded metadata say: enough to preprocess and read the output."""
    return {"format": fmt, "source": str(source), "labels": labels, "image_size": prep.image_size,
            "crop_pct": prep.crop_pct, "resize_size": prep.resize_size, "interpolation": "bicubic",
            "mean": list(prep.mean), "std": list(prep.std), "temperature": temperature,
            "preprocessing": "RGB; resize the shorter side to resize_size (bicubic, antialiased); centre-crop "
                             "image_size; scale to 0..1; subtract mean and divide by std per channel; NCHW float32",
            "input": "pixel_values", "output": "logits (softmax(logits / temperature) gives the confidences)",
            "exported_with": f"torch {torch.__version__}"}


# ---------------------------------------------------------------------------
# Writing the formats
# ---------------------------------------------------------------------------
def export_onnx(net: nn.Module, example: torch.Tensor, out: Path, meta: dict, opset: int | None) -> int:
    """ONNX with a dynamic batch axis and ``meta`` in metadata_props; returns the opset written."""
    try:
        import onnx  # noqa: F401  (the exporter needs onnx and onnxscript; say so before it fails deep inside)
        import onnxscript  # noqa: F401
    except ImportError as error:
        raise UserError(f"--format onnx needs the {error.name} package: {EXTRAS}") from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's notes on transformers internals help no user
        program = torch.onnx.export(net, (example,), input_names=["pixel_values"], output_names=["logits"],
                                    dynamic_shapes={"pixel_values": {0: torch.export.Dim("batch")}},
                                    opset_version=opset, dynamo=True, verbose=False)
    opset = program.model.opset_imports[""]
    for key, value in {**meta, "opset": opset}.items():
        program.model.metadata_props[key] = json.dumps(value)
    weights = sum(p.numel() * p.element_size() for p in net.parameters())
    program.save(str(out), external_data=weights > ONNX_SINGLE_FILE_BYTES)
    return opset


@contextmanager
def quiet_transformers():
    """Tracing reads every attribute of the model, which makes transformers log notes about
    training-only settings (its loss function): hide them."""
    from transformers.utils import logging as hf_logging
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)


def trace(net: nn.Module, example: torch.Tensor, out: Path, meta: dict) -> None:
    """TorchScript by tracing, with ``meta`` as the archive's extra file classifier.json."""
    with warnings.catch_warnings(), torch.inference_mode(), quiet_transformers():
        # The tracer warns about ViT's checks of channels and image size, which the preprocessing
        # fixes, and of causal attention, which ViT never uses. TorchScript and torch.ao
        # quantization are deprecated since PyTorch 2.10 but still work.
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(net, example)
        torch.jit.save(traced, str(out), _extra_files={"classifier.json": json.dumps(meta)})


def quantize_int8(net: nn.Module) -> nn.Module:
    """Dynamic int8 quantization of every nn.Linear (weights int8, activations quantized on the fly)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation notice of torch.ao.quantization, see trace()
        return torch.ao.quantization.quantize_dynamic(net, {nn.Linear}, dtype=torch.qint8)


def load_torchscript(path: Path) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation notice, see trace()
        return torch.jit.load(str(path), map_location="cpu")


# ---------------------------------------------------------------------------
# Reading an ONNX export back (predict.py --model model.onnx)
# ---------------------------------------------------------------------------
class OnnxModel:
    """An ONNX Runtime session called like a Hugging Face classifier: ``model(pixel_values=x).logits``."""

    def __init__(self, path: Path, threads: int | None = None):
        try:
            import onnxruntime
        except ImportError:
            raise UserError(f"{path} is an ONNX model; running it needs the onnxruntime package: {EXTRAS}") from None
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads or 0  # 0: onnxruntime's choice, one per core
        try:
            self.session = onnxruntime.InferenceSession(str(path), options,
                                                        providers=onnxruntime.get_available_providers())
        except Exception as error:  # onnxruntime raises its own exception types for unreadable models
            raise UserError(f"cannot load ONNX model {path}: {str(error).splitlines()[0]}") from None
        self.input_name = self.session.get_inputs()[0].name
        try:
            metadata = self.session.get_modelmeta().custom_metadata_map
            self.meta = {key: json.loads(value) for key, value in metadata.items()}
        except ValueError:
            raise UserError(f"{path} was not exported by export.py (its metadata is not JSON)") from None

    def __call__(self, pixel_values: torch.Tensor) -> SimpleNamespace:
        logits = self.session.run(None, {self.input_name: pixel_values.detach().cpu().numpy()})[0]
        return SimpleNamespace(logits=torch.from_numpy(logits))

    def eval(self) -> "OnnxModel":
        return self  # always in inference mode; here so that validation code can call it like on a module

    def to(self, device: torch.device) -> "OnnxModel":
        return self  # onnxruntime picked its execution provider when the session was made


def load_onnx(path: str | Path, threads: int | None = None) -> tuple[OnnxModel, Preprocessing, list[str]]:
    """An exported ONNX model with the preprocessing and labels from its metadata (as load_checkpoint)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"ONNX model {path} not found. Export one with `python export.py --format onnx`")
    model = OnnxModel(path, threads)
    return model, *read_meta(model.meta, path)


def read_meta(meta: dict, path: Path) -> tuple[Preprocessing, list[str]]:
    """The preprocessing and labels an export carries in its metadata (see describe)."""
    missing = [key for key in ("labels", "image_size", "crop_pct", "mean", "std") if key not in meta]
    if missing:
        raise UserError(f"{path} has no {', '.join(missing)} in its metadata; export it with export.py")
    prep = Preprocessing(int(meta["image_size"]), float(meta["crop_pct"]), tuple(meta["mean"]), tuple(meta["std"]))
    return prep, list(meta["labels"])


def load_exported(path: Path, bf16: bool):
    """An .onnx or OpenVINO .xml export with its preprocessing and labels, as load_checkpoint gives
    them for a checkpoint; ``model.meta`` holds the rest (temperature). ``bf16``: OpenVINO may use it."""
    if path.suffix == ".onnx":
        return load_onnx(path)
    from openvino_backend import load_ir
    model = load_ir(path, bf16)
    return model, *read_meta(model.meta, path)


# ---------------------------------------------------------------------------
# Checking and timing
# ---------------------------------------------------------------------------
def check_batch(prep: Preprocessing, folder: Path | None, limit: int = CHECK_IMAGES,
                option: str = "--check-images") -> tuple[torch.Tensor, str]:
    """Up to ``limit`` preprocessed images from ``folder`` (spread over it), or 16 drawn shapes."""
    transform = eval_transform(prep)
    if folder is None:
        from synthetic import SHAPES, draw_shape
        rng = random.Random(0)
        images = [transform(draw_shape(shape, 96, rng)) for shape in SHAPES for _ in range(2)]
        return torch.stack(images), f"{len(images)} synthetic images"
    if not folder.is_dir():
        raise UserError(f"{option} {folder} is not a folder")
    paths = list_images(folder)
    paths = paths[::max(1, len(paths) // limit)][:limit]  # spread over the classes' sub-folders
    dataset = ImageFolderDataset([(path, 0) for path in paths], transform, prep.resize_size)
    images = [item[0] for item in (dataset[i] for i in range(len(dataset))) if item[0] is not None]
    if not images:
        raise UserError(f"{option} {folder} has no readable images")
    return torch.stack(images), f"{len(images)} images from {folder}"


def images_per_second(run, batch: torch.Tensor, rounds: int) -> float:
    """Throughput of ``run(batch)``: the median of ``rounds`` timed calls after two warm-up calls
    (the median, because other work on the machine slows single calls down)."""
    seconds = []
    with torch.inference_mode():
        for _ in range(rounds + 2):
            start = time.perf_counter()
            run(batch)
            seconds.append(time.perf_counter() - start)
    return len(batch) / statistics.median(seconds[2:])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Export a trained checkpoint to ONNX, TorchScript, int8 or OpenVINO, "
                                            "check it against PyTorch and time it.", formatter_class=HelpFormatter)
    p.add_argument("--model", type=Path, default=Path("checkpoints/best"), help="checkpoint directory")
    p.add_argument("--format", required=True, choices=list(FORMATS),
                   help="onnx: ONNX Runtime and other engines; torchscript: traced fp32 for PyTorch without "
                        "Python model code; int8: dynamically quantized Linear layers, traced; openvino: "
                        "OpenVINO IR (runs bf16 on CPUs that have it); openvino-int8: OpenVINO IR with int8 "
                        "matmuls calibrated on --calibration-images, the fastest on CPUs")
    p.add_argument("--out", type=Path, help="where to write (default: the checkpoint folder's name plus "
                                           + ", ".join(FORMATS.values()) + ", beside it)")
    p.add_argument("--check-images", type=Path, metavar="DIR",
                   help=f"compare on images from this folder (up to {CHECK_IMAGES}; default: 16 synthetic shapes)")
    p.add_argument("--calibration-images", type=Path, default=Path("data"), metavar="DIR",
                   help=f"openvino-int8: images like those it will see (up to {CALIBRATION_IMAGES}, spread over "
                        "the class folders) to measure each layer's int8 range on; train.py's --data is best")
    p.add_argument("--opset", type=int, help="ONNX opset version (default: the exporter's)")
    p.add_argument("--bench-rounds", type=int, default=5,
                   help=f"timed batches of {BENCH_BATCH} per model for the speed comparison (0: skip it)")
    p.add_argument("--threads", type=int,
                   help="CPU threads for PyTorch and onnxruntime (default: theirs, one per core); 1 gives "
                        "steadier timings on a busy machine")
    args = p.parse_args(argv)
    if args.bench_rounds < 0:
        p.error("--bench-rounds must not be negative")
    if args.threads is not None and args.threads < 1:
        p.error("--threads must be at least 1")
    if args.out is None:
        args.out = args.model.with_name(args.model.name + FORMATS[args.format])
    elif (suffix := "." + FORMATS[args.format].rsplit(".", 1)[1]) in (".onnx", ".xml") and args.out.suffix != suffix:
        p.error(f"--out must end in {suffix} for --format {args.format} (predict.py recognises the model by it)")
    return args


def write_artefact(net: nn.Module, example: torch.Tensor, prep: Preprocessing, meta: dict, args: argparse.Namespace):
    """Write ``args.out`` in ``args.format`` (an ONNX export adds its opset to ``meta``, an int8
    OpenVINO one its calibration images) and load it back. Returns a function from pixel values to
    logits, and the engine's name."""
    if args.format.startswith("openvino"):
        from openvino_backend import convert, import_openvino, load_ir, quantize_static, save_ir
        import_openvino(f"--format {args.format}")
        converted = convert(net, prep.image_size)
        if args.format == "openvino-int8":
            if not args.calibration_images.is_dir():
                raise UserError(f"--calibration-images {args.calibration_images} is not a folder: give images like "
                                f"those the model will predict, to calibrate int8 on (train.py's --data is best)")
            calibration, meta["calibrated_on"] = check_batch(prep, args.calibration_images, CALIBRATION_IMAGES,
                                                             "--calibration-images")
            print(f"Calibrating the int8 ranges on {meta['calibrated_on']}")
            converted = quantize_static(converted, calibration)
        save_ir(converted, args.out, meta)
        ir = load_ir(args.out, bf16=cpu_supports_bf16())  # as predict.py will run it

        def run_ir(batch: torch.Tensor) -> torch.Tensor:
            return ir(pixel_values=batch).logits
        return run_ir, "OpenVINO int8" if args.format == "openvino-int8" else "OpenVINO"
    if args.format == "onnx":
        meta["opset"] = export_onnx(net, example, args.out, meta, args.opset)
        session = load_onnx(args.out, args.threads)[0]

        def run(batch: torch.Tensor) -> torch.Tensor:
            return session(pixel_values=batch).logits
        return run, f"ONNX Runtime (opset {meta['opset']})"
    int8 = args.format == "int8"
    trace(quantize_int8(net) if int8 else net, example, args.out, meta)
    return load_torchscript(args.out), f"TorchScript {'int8' if int8 else 'fp32'}"


def export(args: argparse.Namespace) -> bool:
    """Write, reload, compare and time one artefact; False if an exact export disagrees with PyTorch."""
    from checkpoint import load_checkpoint, read_info
    model, prep, labels = load_checkpoint(args.model)
    net = LogitsOnly(model).eval()
    images, described = check_batch(prep, args.check_images)
    batch = images.repeat(-(-BENCH_BATCH // len(images)), 1, 1, 1)[:BENCH_BATCH]
    with torch.inference_mode():
        reference = net(images)
    # PyTorch is timed before the export is loaded: onnxruntime's threads keep spinning for a while
    # after each run and would take the CPU from it.
    base_speed = images_per_second(net, batch, args.bench_rounds) if args.bench_rounds else None

    temperature = float(read_info(args.model).get("temperature", 1.0))  # calibrated by train.py
    meta = describe(prep, labels, args.model, args.format, temperature)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    # batch 2 as the example: tracing or exporting with 1 could bake that size into the graph
    run, engine = write_artefact(net, images[:2], prep, meta, args)
    args.out.with_name(args.out.name + ".json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"Wrote {args.out} and {args.out.name}.json ({len(labels)} labels, {prep.image_size}px input)")

    with torch.inference_mode():
        candidate = run(images)
    difference = (reference - candidate).abs().max().item()
    agree = (reference.argmax(1) == candidate.argmax(1)).sum().item()
    print(f"Checked on {described}: max |logit difference| {difference:.2e}, "
          f"top-1 agreement {agree}/{len(images)} ({100 * agree / len(images):.1f}%)")
    if base_speed:
        speed = images_per_second(run, batch, args.bench_rounds)
        print(f"Speed at batch {BENCH_BATCH}, {args.threads or 'all'} thread(s), images/s:\n"
              f"  {'PyTorch fp32':<28}{base_speed:9.1f}\n  {engine:<28}{speed:9.1f}  ({speed / base_speed:.2f}x)")
    if args.format in EXACT_FORMATS and difference > TOLERANCE:
        print(f"error: the export differs from PyTorch by more than {TOLERANCE:g}; do not use it", file=sys.stderr)
        return False
    if agree < MIN_AGREEMENT * len(images):
        print(f"warning: its top-1 answer differs from PyTorch's on {len(images) - agree} of {len(images)} images; "
              f"check on your own images (--check-images), or export an fp32 format", file=sys.stderr)
    return True


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads or threads)
    try:
        return 0 if export(args) else 1
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    finally:  # called in-process (tests), a changed thread count would change later runs' float sums
        torch.set_num_threads(threads)


if __name__ == "__main__":
    sys.exit(main())
