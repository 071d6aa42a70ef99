"""The options of predict.py and app.py, declared once as fields (vitclassifier/options.py builds their
parsers and checks them), with the checks that involve several options."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vitclassifier.cli import DEVICES, PRECISION_HELP, PRECISIONS
from vitclassifier.config import DATA_FORMATS
from vitclassifier.export.files import CPU_ONLY_SUFFIXES, is_export
from vitclassifier.model.relevance import METHODS
from vitclassifier.options import field_problems, option, type_problems
from vitclassifier.reporting.plots import MAX_PICTURES
from vitclassifier.urls import data_location

RUN_WHERE = "where to run"
MANY = "many images (docs/scale.md)"
REVIEW = "reviewing suggested labels (docs/active-learning.md)"
OUT_SUFFIXES = (".jsonl", ".csv", ".parquet")
CHECKPOINT = Path("checkpoints/best")


@dataclass(kw_only=True)
class PredictConfig:
    """What predict.py is asked: which images, which model, how, and which outputs."""
    image: list[str] | None = option("image files, folders (searched recursively) or glob patterns", None,
                                     nargs="+", metavar="PATH")
    data: Path | str | None = option(
        "instead of --image: labelled data in any form train.py takes (class folders, a label file, a "
        "Hugging Face dataset, tar shards, also on a store: s3://, gs://, az://, https://, pipe:): predicts "
        "the part train.py --evaluate scores (its validation part, else all) and scores it on the way; use "
        "with --out", None, group=MANY, type=data_location)
    data_format: str = option("the form of --data (auto: told from the path)", "auto", choices=DATA_FORMATS,
                              group=MANY)
    image_column: str | None = option("--data label files and Hugging Face datasets: the image column", None,
                                      group=MANY)
    label_column: str | None = option("--data label files and Hugging Face datasets: the label column", None,
                                      group=MANY)
    out: Path | None = option(
        "write one row per image (path, top-k labels and confidences, error) to FILE as the images are "
        "predicted: .jsonl, .csv or .parquet; a kill keeps every finished row (see docs/scale.md)", None,
        metavar="FILE", group=MANY)
    resume: bool = option("--out: continue the interrupted run that wrote FILE, skipping the images done",
                          False, group=MANY)
    overwrite: bool = option("--out: replace FILE (or an interrupted run's rows) if this tool wrote it",
                             False, group=MANY)
    model: Path = option("checkpoint directory, or a model made by export.py: .onnx (run with onnxruntime), "
                         ".xml (OpenVINO IR, e.g. --format openvino-int8: the fastest on CPUs) or .pt "
                         "(TorchScript)", CHECKPOINT)
    top_k: int = option("how many labels to show per image", 3, at_least=1)
    batch_size: int = option("images per forward pass", 32, at_least=1)
    min_confidence: float = option(
        "answer 'unknown' (with the best guess shown) when the top confidence is below P (0-1)", 0.0,
        metavar="P", at_least=0, at_most=1, problem="--min-confidence is a probability from 0 to 1")
    threshold: float | None = option(
        "a model of several labels per image: predict every label whose probability reaches P, instead of "
        "the thresholds fitted per label on validation (saved in the model)", None, metavar="P", at_least=0,
        at_most=1, problem="--threshold is a probability from 0 to 1")
    tta: bool = option("test-time augmentation: average over the image, its mirror and a zoomed centre (and "
                       "its mirror); 4x the compute", False)
    device: str = option(RUN_WHERE, "auto", choices=DEVICES)
    precision: str = option(PRECISION_HELP, "auto", choices=PRECISIONS)
    quantize: bool = option(
        "CPU only: int8 weights for every linear layer (dynamic quantization); the fastest on CPUs without "
        "an export step (export.py --format openvino-int8 is faster still); check agreement with "
        "benchmarks/speed.py", False)
    compile: bool = option("torch.compile the model first (a slow start, see docs/performance.md): pays for "
                           "folders of thousands of images", False)
    runtime: str = option("openvino (CPU, needs `pip install openvino`): convert the model in memory (a few "
                          "seconds) and run it with OpenVINO, bf16 where the CPU has it; batches about as "
                          "fast as --quantize, without int8 rounding; for int8 in OpenVINO export the model "
                          "with export.py --format openvino-int8", "pytorch", choices=["pytorch", "openvino"])
    json: str | None = option("also write the predictions as JSON to FILE ('-': stdout)", None,
                              metavar="FILE")
    visualize: Path | None = option(
        f"save the images with their top-k labels and confidence bars (first {MAX_PICTURES})", None,
        metavar="OUT.png")
    explain: Path | None = option(
        "show where the model looked: for every image, DIR/NAME.jpg (the image and one heatmap per top-k "
        "class) and DIR/NAME.npy (the maps, float32, k x H x W); needs the checkpoint directory, not an "
        "export (see docs/explain.md)", None, metavar="DIR")
    explain_method: str = option(
        "relevance: gradient-weighted attention relevance (Chefer et al. 2021), one map per class; rollout: "
        "attention rollout (Abnar & Zuidema 2020), class-agnostic: the same map for every class",
        "relevance", choices=METHODS)

    def problems(self) -> list[str]:
        """What is wrong with these options, one sentence each naming the option."""
        wrong_types = type_problems(self)
        if wrong_types:
            return wrong_types
        on_cpu_only = self.device not in ("auto", "cpu")
        checks = [
            (self.runtime != "openvino" or not (self.quantize or self.compile or on_cpu_only),
             "--runtime openvino runs on the CPU and does its own optimising: leave out --quantize, "
             "--compile and --device cuda/mps (for int8 with OpenVINO, export once: python export.py "
             "--format openvino-int8)"),
            (not is_export(self.model) or not (self.quantize or self.compile or self.runtime != "pytorch"),
             f"--model {self.model} is an export and runs as it was exported: leave out --quantize, "
             f"--compile and --runtime"),
            (self.model.suffix not in CPU_ONLY_SUFFIXES or not on_cpu_only,
             f"--model {self.model} is an export that runs on the CPU: leave out --device"),
        ]
        return field_problems(self) + [message for ok, message in checks + self.many_checks() if not ok]

    def many_checks(self) -> list[tuple[bool, str]]:
        """The checks of --data, --out, --resume and --overwrite."""
        out = self.out
        return [
            ((self.image is None) != (self.data is None),
             "give the images with --image or --data (one of them)"),
            (out is None or out.suffix.lower() in OUT_SUFFIXES,
             f"--out {out} must end in {', '.join(OUT_SUFFIXES)} (the format is told by the suffix)"),
            (out is not None or not (self.resume or self.overwrite),
             "--resume and --overwrite go with --out"),
            (not (self.resume and self.overwrite),
             "--resume continues FILE, --overwrite replaces it: choose one"),
            (out is None or not (self.json or self.explain),
             "--out writes every prediction as it goes: leave out --json and --explain"),
            (self.data is None or not (self.visualize or self.explain or self.json),
             "--data is predicted into --out: --visualize, --explain and --json take --image"),
        ]


@dataclass(kw_only=True)
class AppConfig:
    """What app.py serves, where, and how."""
    model: Path = option("checkpoint directory, or an .onnx or .xml model made by export.py", CHECKPOINT)
    host: str = option("address to listen on; 0.0.0.0 makes the page reachable from other machines",
                       "127.0.0.1")
    port: int = option("port to listen on", 7860, at_least=1, at_most=65535,
                       problem="--port must be from 1 to 65535")
    share: bool = option("also publish the page through a temporary public gradio.live link", False)
    top_k: int = option("labels shown per image at first (a slider changes it)", 3, at_least=1,
                        problem="--top-k and --batch-size must be at least 1")
    batch_size: int = option("images per forward pass", 32, at_least=1,
                             problem="--top-k and --batch-size must be at least 1")
    device: str = option(RUN_WHERE, "auto", choices=DEVICES)
    review: Path | None = option(
        "instead of classifying uploads: review the suggestions.csv written by classifier.py "
        "--suggest-labels, one image at a time with the model's suggestion marked; confirm (Enter) or "
        "correct (a class's button or number key); each answer is saved at once into --labels-out "
        "(docs/active-learning.md)",
        None, metavar="SUGGESTIONS.csv", group=REVIEW)
    labels_out: Path | None = option(
        "--review: the label file (image,label) each answer is appended to, for train.py --data; in a folder "
        "above the images", None, metavar="LABELS.csv", group=REVIEW)

    def problems(self) -> list[str]:
        """What is wrong with these options, one sentence each naming the option."""
        wrong = type_problems(self) or field_problems(self)
        if not wrong and (self.review is None) != (self.labels_out is None):
            wrong = ["--review and --labels-out go together: the suggestions to review, and the label file "
                     "the answers go to"]
        return wrong
