"""Fine-tune a Vision Transformer on a folder of images (one sub-folder per class).

    python train.py --epochs 5 --batch-size 16

Each epoch trains with AdamW (linear warm-up, then cosine decay), validates, and keeps the
best model by validation accuracy. Outputs in --output-dir: best/ and last/ (Hugging Face
save_pretrained directories), metrics.csv, and last/training_state.pt for --resume.
"""
from __future__ import annotations

import argparse
import csv
import math
import os
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from checkpoint import load_training_state, save_model
from classifier import (HelpFormatter, ImageFolderDataset, UserError, collate_skipping_bad, eval_transform,
                        load_splits, train_transform)
from devices import autocast_dtype, pick_device
from model import PRESETS, create_model, freeze

METRIC_FIELDS = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "val_top3", "lr", "seconds"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Fine-tune a pre-trained ViT on a folder of images.",
                                formatter_class=HelpFormatter)
    p.add_argument("--data", type=Path, default=Path("data"),
                   help="folder with one sub-folder per class (or train/ and val/ sub-folders)")
    p.add_argument("--model", default="vit-base",
                   help=f"preset ({', '.join(PRESETS)}), Hugging Face Hub id, or local checkpoint directory")
    p.add_argument("--no-pretrained", action="store_true",
                   help="build the preset's architecture with random weights (offline, no download)")
    p.add_argument("--image-size", type=int, default=None,
                   help="input size in pixels, a multiple of the patch size (default: the model's own)")
    p.add_argument("--freeze", default="none",
                   help="none: train all; backbone: train the head only; N: head + last N encoder blocks")
    p.add_argument("--dropout", type=float, default=0.1, help="dropout before the classification head")
    p.add_argument("--epochs", type=int, default=10, help="number of passes over the training set")
    p.add_argument("--batch-size", type=int, default=32, help="images per training step")
    p.add_argument("--lr", type=float, default=None,
                   help="peak learning rate (default: 5e-5 for pretrained weights, 3e-4 with --no-pretrained)")
    p.add_argument("--weight-decay", type=float, default=0.05, help="AdamW weight decay (not on biases/norms)")
    p.add_argument("--warmup", type=float, default=0.1, help="fraction of all steps spent warming up the LR")
    p.add_argument("--grad-clip", type=float, default=1.0, help="clip the gradient norm to this (0: off)")
    p.add_argument("--patience", type=int, default=5,
                   help="stop after this many epochs without a better validation score (0: never)")
    p.add_argument("--val-split", type=float, default=0.2,
                   help="fraction of each class held out for validation (ignored with train/ and val/)")
    for name in ("crop", "flip", "rotate", "color-jitter"):
        p.add_argument(f"--no-{name}", action="store_true", help=f"switch off the random {name} augmentation")
    p.add_argument("--seed", type=int, default=42, help="seed for the split, augmentation and initialisation")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"],
                   help="where to train; auto picks a GPU when there is one")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="autocast precision; auto: bf16 where the device supports it, else fp16 on CUDA, else fp32")
    p.add_argument("--num-workers", type=int, default=min(4, max(1, (os.cpu_count() or 2) // 2)),
                   help="DataLoader worker processes decoding images")
    p.add_argument("--output-dir", type=Path, default=Path("checkpoints"), help="where checkpoints go")
    p.add_argument("--resume", nargs="?", const="", default=None, metavar="DIR",
                   help="continue an interrupted run from DIR/last (default DIR: --output-dir)")
    args = p.parse_args(argv)
    checks = [(args.epochs >= 1, "--epochs must be at least 1"),
              (args.batch_size >= 1, "--batch-size must be at least 1"),
              (0 < args.val_split < 1, "--val-split must be between 0 and 1"),
              (args.lr is None or args.lr > 0, "--lr must be positive"),
              (args.weight_decay >= 0, "--weight-decay must not be negative"),
              (0 <= args.warmup < 1, "--warmup is a fraction of the steps, from 0 to below 1"),
              (0 <= args.dropout < 1, "--dropout must be from 0 to below 1"),
              (args.patience >= 0 and args.num_workers >= 0, "--patience and --num-workers must be >= 0"),
              (args.image_size is None or args.image_size >= 16, "--image-size must be at least 16")]
    for ok, message in checks:
        if not ok:
            p.error(message)
    if args.lr is None:
        args.lr = 3e-4 if args.no_pretrained else 5e-5
    return args


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW with weight decay on weight matrices only: biases and norm weights (1-D) are exempt."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim > 1], "weight_decay": weight_decay},
              {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr)


def warmup_cosine(warmup_steps: int, total_steps: int):
    """LR multiplier: linear rise over the warm-up, then cosine decay to zero."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return factor


def run_epoch(model, loader, device, dtype, bad_files: dict, optimizer=None, scheduler=None, scaler=None,
              grad_clip: float = 0.0, desc: str = "") -> dict:
    """One pass over ``loader``: trains when an optimizer is given, else evaluates.

    Returns summed loss, top-1 and top-3 hits and the sample count, so averages are exact."""
    training = optimizer is not None
    model.train(training)
    totals = {"loss": 0.0, "top1": 0, "top3": 0, "count": 0}
    bar = tqdm(loader, desc=desc, leave=False, disable=None, dynamic_ncols=True)
    for images, labels, _, bad in bar:
        for path, reason in bad:
            if path not in bad_files:
                tqdm.write(f"warning: skipping {path}: {reason}", file=sys.stderr)
                bad_files[path] = reason
        if images is None:
            continue
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        autocast = torch.autocast(device.type, dtype=dtype) if dtype else nullcontext()
        with torch.set_grad_enabled(training), autocast:
            logits = model(pixel_values=images).logits.float()
            loss = F.cross_entropy(logits, labels)
        if training:
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if grad_clip > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
        top = logits.topk(min(3, logits.shape[1]), dim=1).indices
        totals["loss"] += loss.item() * len(labels)
        totals["top1"] += (top[:, 0] == labels).sum().item()
        totals["top3"] += (top == labels[:, None]).any(dim=1).sum().item()
        totals["count"] += len(labels)
        bar.set_postfix(loss=f"{totals['loss'] / totals['count']:.3f}",
                        acc=f"{totals['top1'] / totals['count']:.3f}")
    count = max(1, totals["count"])
    return {"loss": totals["loss"] / count, "acc": totals["top1"] / count,
            "top3": totals["top3"] / count, "count": totals["count"]}


def read_metrics(path: Path, up_to_epoch: int) -> list[dict]:
    """Rows of an earlier metrics.csv up to ``up_to_epoch`` (to continue it on --resume)."""
    if not path.is_file():
        return []
    with open(path, newline="") as handle:
        return [row for row in csv.DictReader(handle) if int(row["epoch"]) <= up_to_epoch]


def write_metrics(path: Path, rows: list[dict]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=METRIC_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def check_output_dir(output_dir: Path) -> None:
    """Fail before training, not after an hour, when checkpoints could not be written."""
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        probe = output_dir / ".write-test"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as error:
        raise UserError(f"cannot write to --output-dir {output_dir}: {error.strerror or error}") from None


def train(args: argparse.Namespace) -> dict:
    """The whole run: data, model, the epoch loop with validation, checkpoints. Returns a summary."""
    started = time.time()
    torch.manual_seed(args.seed)
    device = pick_device(args.device)
    dtype = autocast_dtype(device, args.precision)
    check_output_dir(args.output_dir)
    labels, train_samples, val_samples = load_splits(args.data, args.val_split, args.seed)

    resume_dir = None
    if args.resume is not None:
        resume_dir = Path(args.resume or args.output_dir) / "last"
        state = load_training_state(resume_dir)
        if state["labels"] != labels:
            raise UserError(f"cannot resume: {resume_dir} was trained on classes {state['labels']}, "
                            f"but {args.data} has {labels}")
    model, prep = create_model(str(resume_dir) if resume_dir else args.model, labels,
                               pretrained=resume_dir is not None or not args.no_pretrained,
                               dropout=args.dropout, image_size=args.image_size)
    freeze(model, args.freeze)
    model.to(device)

    augment = dict(crop=not args.no_crop, flip=not args.no_flip, rotate=not args.no_rotate,
                   color_jitter=not args.no_color_jitter)
    loader_options = dict(batch_size=args.batch_size, num_workers=args.num_workers,
                          collate_fn=collate_skipping_bad, pin_memory=device.type == "cuda")
    shuffle_generator = torch.Generator()
    train_loader = DataLoader(ImageFolderDataset(train_samples, train_transform(prep, **augment), prep.resize_size),
                              shuffle=True, drop_last=len(train_samples) > args.batch_size,
                              generator=shuffle_generator, **loader_options)
    val_loader = DataLoader(ImageFolderDataset(val_samples, eval_transform(prep), prep.resize_size),
                            **loader_options)

    optimizer = make_optimizer(model, args.lr, args.weight_decay)
    total_steps = args.epochs * len(train_loader)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(int(args.warmup * total_steps), total_steps))
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    best = {"epoch": 0, "val_acc": -1.0, "val_loss": math.inf}
    start_epoch, stale_epochs = 1, 0
    if resume_dir is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        best, stale_epochs, start_epoch = state["best"], state["stale_epochs"], state["epoch"] + 1
        print(f"Resuming from {resume_dir} after epoch {state['epoch']}")
    metrics_path = args.output_dir / "metrics.csv"
    rows = read_metrics(resume_dir.parent / "metrics.csv", start_epoch - 1) if resume_dir else []

    n_params = sum(p.numel() for p in model.parameters())
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(f"{len(labels)} classes, {len(train_samples)} training and {len(val_samples)} validation images | "
          f"{args.model}{' (random init)' if args.no_pretrained else ''} @ {prep.image_size}px, "
          f"{n_train:,} of {n_params:,} parameters trained | "
          f"{device.type}, {str(dtype).replace('torch.', '') if dtype else 'fp32'}")
    bad_files: dict[str, str] = {}
    for epoch in range(start_epoch, args.epochs + 1):
        epoch_start = time.time()
        torch.manual_seed(args.seed * 1000 + epoch)  # each epoch's randomness depends only on (seed, epoch),
        shuffle_generator.manual_seed(args.seed * 1000 + epoch)  # so a resumed run repeats it exactly
        lr = scheduler.get_last_lr()[0]
        train_stats = run_epoch(model, train_loader, device, dtype, bad_files, optimizer, scheduler, scaler,
                                args.grad_clip, desc=f"epoch {epoch}/{args.epochs} train")
        with torch.inference_mode():
            val_stats = run_epoch(model, val_loader, device, dtype, bad_files, desc=f"epoch {epoch} val")
        rows.append({"epoch": epoch, "train_loss": f"{train_stats['loss']:.6f}", "train_acc": f"{train_stats['acc']:.6f}",
                     "val_loss": f"{val_stats['loss']:.6f}", "val_acc": f"{val_stats['acc']:.6f}",
                     "val_top3": f"{val_stats['top3']:.6f}", "lr": f"{lr:.3e}",
                     "seconds": f"{time.time() - epoch_start:.1f}"})
        improved = (val_stats["acc"], -val_stats["loss"]) > (best["val_acc"], -best["val_loss"])
        if improved:
            best = {"epoch": epoch, "val_acc": val_stats["acc"], "val_loss": val_stats["loss"]}
            save_model(model, prep, args.output_dir / "best", info={**best, "labels": labels, "model": args.model})
        stale_epochs = 0 if improved else stale_epochs + 1
        state = {"epoch": epoch, "labels": labels, "best": best, "stale_epochs": stale_epochs,
                 "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                 "scaler": scaler.state_dict()}
        save_model(model, prep, args.output_dir / "last", training_state=state)
        write_metrics(metrics_path, rows)
        print(f"epoch {epoch}/{args.epochs}: train loss {train_stats['loss']:.4f} acc {train_stats['acc']:.3f} | "
              f"val loss {val_stats['loss']:.4f} acc {val_stats['acc']:.3f} top3 {val_stats['top3']:.3f} | "
              f"{time.time() - epoch_start:.0f}s{'  * best, saved' if improved else ''}")
        if args.patience and stale_epochs >= args.patience:
            print(f"Early stop: no better validation score for {args.patience} epochs")
            break

    if bad_files:
        print(f"{len(bad_files)} unreadable image(s) were skipped:", file=sys.stderr)
        for path, reason in sorted(bad_files.items()):
            print(f"  {path}: {reason}", file=sys.stderr)
    minutes = (time.time() - started) / 60
    print(f"Done in {minutes:.1f} min. Best epoch {best['epoch']}: val acc {best['val_acc']:.3f}, "
          f"loss {best['val_loss']:.4f}. Model: {args.output_dir / 'best'}  "
          f"(try: python predict.py --model {args.output_dir / 'best'} --image IMAGE)")
    return {**best, "minutes": minutes, "bad_files": bad_files}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        train(args)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nInterrupted. Continue with: python train.py --resume (same options)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
