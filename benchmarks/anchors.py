"""The Hugging Face side of benchmarks/speed.py: transformers.Trainer with the recipe of the
Hugging Face image-classification example, and transformers.pipeline("image-classification"),
each as a user of those tools would run them on our data and checkpoint."""
from __future__ import annotations

import time
from pathlib import Path

import torch

from vitclassifier.model.vit import create_model


class HFExampleDataset(torch.utils.data.Dataset):
    """The data side of transformers' examples/pytorch/image-classification/run_image_classification.py."""

    def __init__(self, samples, transform):
        self.samples, self.transform = samples, transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        from PIL import Image
        path, label = self.samples[index]
        return {"pixel_values": self.transform(Image.open(path).convert("RGB")), "labels": label}


def hf_collate(batch: list[dict]) -> dict:
    return {"pixel_values": torch.stack([item["pixel_values"] for item in batch]),
            "labels": torch.tensor([item["labels"] for item in batch])}


def train_with_trainer(args, labels, train, val, lr: float, work: Path) -> dict:
    """transformers.Trainer with the example recipe: RandomResizedCrop + flip + normalise, fp32."""
    import numpy as np
    from torchvision import transforms
    from transformers import Trainer, TrainingArguments
    start = time.perf_counter()
    torch.manual_seed(args.seed)
    model, prep = create_model(args.model, labels, pretrained=not args.no_pretrained,
                               image_size=args.image_size)
    normalize = transforms.Normalize(prep.mean, prep.std)
    size = prep.image_size
    train_tf = transforms.Compose([transforms.RandomResizedCrop(size), transforms.RandomHorizontalFlip(),
                                   transforms.ToTensor(), normalize])
    val_tf = transforms.Compose([transforms.Resize(size), transforms.CenterCrop(size), transforms.ToTensor(),
                                 normalize])
    training_args = TrainingArguments(
        output_dir=str(work / "trainer"), per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.batch_size, num_train_epochs=args.epochs, learning_rate=lr,
        eval_strategy="epoch", save_strategy="no", logging_strategy="no", report_to=[], seed=args.seed,
        dataloader_num_workers=args.num_workers, remove_unused_columns=False, disable_tqdm=True,
        use_cpu=args.device == "cpu" or not torch.cuda.is_available(), log_level="error")
    accuracies = []

    def accuracy(prediction) -> dict:
        accuracies.append(float((np.argmax(prediction.predictions, axis=1) == prediction.label_ids).mean()))
        return {"accuracy": accuracies[-1]}

    class TimedTrainer(Trainer):
        """Counts the seconds spent validating, so the training phase can be told apart."""
        eval_seconds = 0.0

        def evaluate(self, *args, **kwargs):
            start = time.perf_counter()
            try:
                return super().evaluate(*args, **kwargs)
            finally:
                self.eval_seconds += time.perf_counter() - start

    trainer = TimedTrainer(model=model, args=training_args, train_dataset=HFExampleDataset(train, train_tf),
                           eval_dataset=HFExampleDataset(val, val_tf), data_collator=hf_collate,
                           compute_metrics=accuracy)
    train_start = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - train_start - trainer.eval_seconds
    trainer.save_model(str(work / "trainer" / "final"))
    return {"seconds": time.perf_counter() - start, "train_seconds": train_seconds,
            "val_acc": max(accuracies)}


def pipeline_classifier(checkpoint: Path, device: torch.device):
    """transformers.pipeline("image-classification") on our checkpoint: files in, top-1 labels out."""
    from transformers import pipeline
    classify = pipeline("image-classification", model=str(checkpoint), device=device)

    def run(files: list[Path], batch_size: int) -> list[str]:
        outputs = classify([str(path) for path in files], batch_size=batch_size, top_k=1)
        return [output[0]["label"] for output in outputs]
    return run, 0.0
