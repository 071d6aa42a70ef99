"""Several labels per image (issue 30): our multi-label training against the Hugging Face anchor, on
generated scenes of 0-3 shapes.

    python benchmarks/multilabel.py --work /tmp/ml-bench --per-class 1200 --epochs 10

Ours: ``train.py`` on ``scenes/labels.csv`` with the fixed recipe (BCE, label smoothing, per-label
thresholds fitted on validation), from random weights (offline). The anchor: transformers.Trainer with
``problem_type="multi_label_classification"`` (BCE), the Hugging Face image-classification example's
augmentation (RandomResizedCrop + flip, benchmarks/anchors.py), the same model, split, epochs, batch
and learning rate, predicting at 0.5. Both are scored on the same validation split with
reporting/multilabel.py: mAP, micro-F1, exact match; ours also at 0.5, which measures what the fitted
thresholds add.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.anchors import HFExampleDataset  # noqa: E402
from vitclassifier.data.sources import open_source  # noqa: E402
from vitclassifier.model.vit import create_model  # noqa: E402
from vitclassifier.reporting.multilabel import multi_label_scores, sigmoid  # noqa: E402


def scores_of(probs: np.ndarray, targets: np.ndarray, thresholds: np.ndarray) -> dict:
    found = multi_label_scores(probs, targets, thresholds)
    return {key: round(found[key], 4) for key in ("map", "micro_f1", "macro_f1", "acc")}


def ours(args, labels_file: Path, work: Path) -> dict:
    """train.py as a user runs it, then best/ scored at its thresholds and at 0.5."""
    import train
    from vitclassifier.data.transforms import eval_transform
    from vitclassifier.model.checkpoint import load_checkpoint, read_info
    from vitclassifier.reporting.multilabel import thresholds_of
    start = time.perf_counter()
    out = work / "ours"
    code = train.main(["--data", str(labels_file), "--model", args.model, "--no-pretrained",
                       "--image-size", str(args.image_size), "--epochs", str(args.epochs), "--batch-size",
                       str(args.batch_size), "--lr", str(args.lr), "--recipe", "fixed", "--output-dir",
                       str(out), "--overwrite", "--seed", str(args.seed), "--precision", "fp32"])
    assert code == 0
    seconds = time.perf_counter() - start
    model, prep, labels = load_checkpoint(out / "best")
    probs, targets = predict_val(model, eval_transform(prep), labels_file, args)
    thresholds = thresholds_of(read_info(out / "best"), labels)
    return {"seconds": round(seconds), "thresholds": scores_of(probs, targets, thresholds),
            "at_0.5": scores_of(probs, targets, np.full(len(labels), 0.5))}


@torch.inference_mode()
def predict_val(model: torch.nn.Module, transform, labels_file: Path, args) -> tuple[np.ndarray, np.ndarray]:
    """Every validation image's sigmoid probabilities and multi-hot targets (the run's own split)."""
    from PIL import Image
    source = open_source(labels_file, val_split=0.2, seed=args.seed)
    model.eval()
    probs, targets = [], []
    for path, target in source.val():
        pixels = transform(Image.open(path).convert("RGB"))
        probs.append(sigmoid(model(pixel_values=pixels[None]).logits)[0])
        targets.append(target)
    return np.stack(probs), np.array(targets)


def anchor(args, labels_file: Path, work: Path) -> dict:
    """transformers.Trainer, problem_type multi_label_classification, the example's recipe, 0.5."""
    from torchvision import transforms
    from transformers import Trainer, TrainingArguments
    start = time.perf_counter()
    source = open_source(labels_file, val_split=0.2, seed=args.seed)
    torch.manual_seed(args.seed)
    model, prep = create_model(args.model, source.labels, pretrained=False, image_size=args.image_size)
    model.config.problem_type = "multi_label_classification"
    size, normalize = prep.image_size, transforms.Normalize(prep.mean, prep.std)
    train_tf = transforms.Compose([transforms.RandomResizedCrop(size), transforms.RandomHorizontalFlip(),
                                   transforms.ToTensor(), normalize])
    val_tf = transforms.Compose([transforms.Resize(size), transforms.CenterCrop(size), transforms.ToTensor(),
                                 normalize])

    def collate(batch: list[dict]) -> dict:
        return {"pixel_values": torch.stack([item["pixel_values"] for item in batch]),
                "labels": torch.tensor([item["labels"] for item in batch], dtype=torch.float32)}

    training_args = TrainingArguments(
        output_dir=str(work / "trainer"), per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.batch_size, num_train_epochs=args.epochs, learning_rate=args.lr,
        eval_strategy="no", save_strategy="no", logging_strategy="no", report_to=[], seed=args.seed,
        dataloader_num_workers=0, remove_unused_columns=False, disable_tqdm=True, use_cpu=not
        torch.cuda.is_available(), log_level="error")
    trainer = Trainer(model=model, args=training_args, data_collator=collate,
                      train_dataset=HFExampleDataset(source.train(), train_tf))
    trainer.train()
    seconds = time.perf_counter() - start
    probs, targets = predict_val(trainer.model.cpu(), val_tf, labels_file, args)
    return {"seconds": round(seconds), "at_0.5": scores_of(probs, targets, np.full(len(source.labels), 0.5))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--per-class", type=int, default=1200, help="--generate-data's (default size: 1200)")
    parser.add_argument("--model", default="vit-tiny")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-4, help="our default from random weights")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    import classifier
    data = args.work / "scenes"
    assert classifier.main(["--generate-data", "--multi-label", "--out", str(data), "--per-class",
                            str(args.per_class), "--image-size", str(args.image_size)]) == 0
    labels_file = data / "labels.csv"
    results = {"options": {k: str(v) for k, v in vars(args).items()},
               "ours": ours(args, labels_file, args.work), "hf_trainer": anchor(args, labels_file, args.work)}
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
