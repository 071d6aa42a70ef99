"""Fine-tune a Vision Transformer on a folder of images (one sub-folder per class).

    python train.py --epochs 5 --batch-size 16
    torchrun --nproc_per_node=2 train.py --epochs 5 --batch-size 16     # one process per device

Each epoch trains with AdamW (linear warm-up, then cosine decay), validates, and keeps the
best model by the --select-by score. Outputs in --output-dir: best/ and last/ (Hugging Face
save_pretrained directories), metrics.csv, and last/training_state.pt for --resume.
Ctrl-C (or SIGTERM) finishes the current step, saves last/ and says how to resume.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from audit import audit_dataset, format_report
from checkpoint import check_output_dir, save_model
from classifier import (HelpFormatter, ImageFolderDataset, UserError, collate_skipping_bad, eval_transform,
                        load_splits, train_transform)
from devices import autocast_dtype, pick_device
from distributed import (EpochSampler, ShardSampler, World, close_world, init_world, merge_dicts_across,
                         sum_across, sum_tensor_across)
from metrics import SELECT_BY, macro_f1, read_metrics, write_metrics
from model import PRESETS, create_model, freeze
from recipe import class_weights, make_optimizer, warmup_cosine
from resume import StopSignal, data_fingerprint, ignore_stop_signals, options_of, prepare_resume

def freeze_spec(value: str) -> str:
    if value in ("none", "backbone") or value.isdigit():
        return value
    raise argparse.ArgumentTypeError(f"{value!r}: use none, backbone or a number of encoder blocks")


def build_parser() -> argparse.ArgumentParser:
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
    p.add_argument("--freeze", type=freeze_spec, default="none",
                   help="none: train all; backbone: train the head only; N: head + last N encoder blocks")
    p.add_argument("--dropout", type=float, default=0.1, help="dropout before the classification head")
    p.add_argument("--epochs", type=int, default=10, help="number of passes over the training set")
    p.add_argument("--batch-size", type=int, default=32,
                   help="images per training step and process (under torchrun the global batch is N times this)")
    p.add_argument("--lr", type=float, default=None,
                   help="peak learning rate (default: 5e-5 for pretrained weights, 3e-4 with --no-pretrained)")
    p.add_argument("--weight-decay", type=float, default=0.05, help="AdamW weight decay (not on biases/norms)")
    p.add_argument("--warmup", type=float, default=0.1, help="fraction of all steps spent warming up the LR")
    p.add_argument("--grad-clip", type=float, default=1.0, help="clip the gradient norm to this (0: off)")
    p.add_argument("--patience", type=int, default=5,
                   help="stop after this many epochs without a better validation score (0: never)")
    p.add_argument("--select-by", default="accuracy", choices=list(SELECT_BY),
                   help="validation score that picks the best model (macro-f1 suits imbalanced classes)")
    p.add_argument("--class-weights", default="none", choices=["none", "auto"],
                   help="auto: weight the loss by inverse class frequency (for imbalanced classes)")
    p.add_argument("--balanced-sampler", action="store_true",
                   help="draw training images so every class is seen equally often (with replacement)")
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
    p.add_argument("--resume", nargs="?", const="", default=None, metavar="DIR|auto",
                   help="continue an interrupted run from DIR/last (default DIR: --output-dir); auto: resume "
                        "if --output-dir holds an interrupted run, else start afresh")
    return p


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, set[str]]:
    """The options, and the names of those given explicitly (a resumed run takes the rest from its save)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    checks = [(args.epochs >= 1, "--epochs must be at least 1"),
              (args.batch_size >= 1, "--batch-size must be at least 1"),
              (0 < args.val_split < 1, "--val-split must be between 0 and 1"),
              (args.lr is None or args.lr > 0, "--lr must be positive"),
              (args.weight_decay >= 0, "--weight-decay must not be negative"),
              (0 <= args.warmup < 1, "--warmup is a fraction of the steps, from 0 to below 1"),
              (0 <= args.dropout < 1, "--dropout must be from 0 to below 1"),
              (args.grad_clip >= 0, "--grad-clip must not be negative"),
              (args.patience >= 0 and args.num_workers >= 0, "--patience and --num-workers must be >= 0"),
              (args.image_size is None or args.image_size >= 16, "--image-size must be at least 16")]
    for ok, message in checks:
        if not ok:
            parser.error(message)
    if args.lr is None:
        args.lr = 3e-4 if args.no_pretrained else 5e-5
    for action in parser._actions:  # parse again with no defaults: what remains was typed by the user
        action.default = argparse.SUPPRESS
    return args, set(vars(parser.parse_args(argv)))


@dataclass
class Run:
    """What the epoch functions share."""
    model: torch.nn.Module  # wrapped in DistributedDataParallel under torchrun
    net: torch.nn.Module  # the plain model: evaluated and saved
    device: torch.device
    dtype: torch.dtype | None
    world: World
    loss_weight: torch.Tensor | None = None
    bad_files: dict = field(default_factory=dict)

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.dtype) if self.dtype else nullcontext()

    def note_bad(self, bad: list[tuple[str, str]]) -> None:
        for path, reason in bad:
            if path not in self.bad_files:
                tqdm.write(f"warning: skipping {path}: {reason}", file=sys.stderr)
                self.bad_files[path] = reason


def train_epoch(run: Run, loader: DataLoader, epoch: int, first_step: int, totals: dict, stop: StopSignal,
                optimizer, scheduler, scaler, args: argparse.Namespace) -> int:
    """Train from batch ``first_step`` of ``epoch``, adding into ``totals``. Returns the number of
    the next batch to train: all of them, or fewer when a stop was requested."""
    run.model.train()
    step = first_step
    bar = tqdm(loader, desc=f"epoch {epoch}/{args.epochs} train", leave=False, dynamic_ncols=True,
               disable=None if run.world.is_main else True)
    for images, labels, _, bad in bar:
        run.note_bad(bad)
        stop_now, some_empty = sum_across([float(stop.signum > 0), float(images is None)], run.world, run.device)
        if stop_now:
            break
        step += 1
        if some_empty:  # a batch of only unreadable files: every process skips the step together
            continue
        # Dropout depends only on (seed, epoch, step, process): a resumed run repeats it exactly.
        torch.manual_seed(((args.seed * 1000 + epoch) * 100_003 + step) * 101 + run.world.rank)
        images = images.to(run.device, non_blocking=True)
        labels = labels.to(run.device, non_blocking=True)
        with run.autocast():
            logits = run.model(pixel_values=images).logits.float()
            loss = F.cross_entropy(logits, labels, weight=run.loss_weight)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if args.grad_clip > 0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(run.model.parameters(), args.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        totals["loss"] += loss.item() * len(labels)
        totals["top1"] += (logits.argmax(1) == labels).sum().item()
        totals["count"] += len(labels)
        bar.set_postfix(loss=f"{totals['loss'] / totals['count']:.3f}", acc=f"{totals['top1'] / totals['count']:.3f}")
    return step


@torch.inference_mode()
def evaluate(run: Run, loader: DataLoader, num_classes: int, desc: str) -> dict:
    """Loss, top-1, top-3 and macro-F1 over the whole validation set (summed over processes)."""
    run.net.eval()
    sums = [0.0, 0.0, 0.0, 0.0]  # loss, top-1 hits, top-3 hits, images
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=run.device)
    for images, labels, _, bad in tqdm(loader, desc=desc, leave=False, disable=None if run.world.is_main else True):
        run.note_bad(bad)
        if images is None:
            continue
        images, labels = images.to(run.device, non_blocking=True), labels.to(run.device, non_blocking=True)
        with run.autocast():
            logits = run.net(pixel_values=images).logits.float()
        top = logits.topk(min(3, num_classes), dim=1).indices
        sums[0] += F.cross_entropy(logits, labels, reduction="sum").item()
        sums[1] += (top[:, 0] == labels).sum().item()
        sums[2] += (top == labels[:, None]).any(dim=1).sum().item()
        sums[3] += len(labels)
        confusion += torch.bincount(labels * num_classes + top[:, 0], minlength=num_classes ** 2).view_as(confusion)
    loss, top1, top3, count = sum_across(sums, run.world, run.device)
    confusion = sum_tensor_across(confusion, run.world)
    count_or_1 = max(1.0, count)
    return {"loss": loss / count_or_1, "acc": top1 / count_or_1, "top3": top3 / count_or_1,
            "macro_f1": macro_f1(confusion.cpu()), "count": int(count)}


def check_classes_readable(bad_files: dict, samples: list[tuple[Path, int]], labels: list[str]) -> None:
    """Training cannot learn a class whose every training image is unreadable: say so."""
    for index, name in enumerate(labels):
        paths = [str(path) for path, label in samples if label == index]
        if all(path in bad_files for path in paths):
            raise UserError(f"every training image of class {name!r} is unreadable ({len(paths)} files, listed "
                            f"above); fix or remove them, or remove the class folder")


def train(args: argparse.Namespace, given: set[str] = frozenset()) -> dict:
    """The whole run: data, model, the epoch loop with validation, checkpoints. Returns a summary."""
    state = prepare_resume(args, given)  # first: a resumed run takes its options from the save
    world, device_choice = init_world(args.device)
    try:
        return _train(args, state, world, pick_device(device_choice))
    finally:
        close_world(world)


def _train(args: argparse.Namespace, state: dict | None, world: World, device: torch.device) -> dict:
    started = time.time()
    say = print if world.is_main else (lambda *a, **k: None)
    dtype = autocast_dtype(device, args.precision)
    labels, train_samples, val_samples = load_splits(args.data, args.val_split, args.seed)
    fingerprint = data_fingerprint(train_samples, args.data)
    if state is not None and (state["labels"] != labels or state["data"] != fingerprint):
        raise UserError(f"cannot resume {state['dir']}: the data in {args.data} changed since that run "
                        f"(classes then: {state['labels']}, now: {labels}; or training files added/removed)")
    if world.is_main:
        report = audit_dataset(labels, train_samples, val_samples, image_size=None, decode=False)
        notes = format_report(report, brief=True)
        if notes:
            print(notes)
        if report["fatal"]:
            raise UserError("; ".join(report["fatal"]))

    torch.manual_seed(args.seed)
    model, prep = create_model(str(state["dir"]) if state else args.model, labels,
                               pretrained=state is not None or not args.no_pretrained,
                               dropout=args.dropout, image_size=args.image_size)
    freeze(model, args.freeze)
    model.to(device)
    model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    if world.is_main:  # best + last + optimizer moments + one copy while a save is swapped in
        check_output_dir(args.output_dir, needed_bytes=6 * model_bytes + 2**20)
    wrapped = DistributedDataParallel(model) if world.distributed else model
    run = Run(wrapped, model, device, dtype, world)
    if args.class_weights == "auto":
        run.loss_weight = class_weights([label for _, label in train_samples], len(labels)).to(device)

    augment = dict(crop=not args.no_crop, flip=not args.no_flip, rotate=not args.no_rotate,
                   color_jitter=not args.no_color_jitter)
    loader_options = dict(batch_size=args.batch_size, num_workers=args.num_workers, collate_fn=collate_skipping_bad,
                          pin_memory=device.type == "cuda", worker_init_fn=ignore_stop_signals)
    train_set = ImageFolderDataset(train_samples, train_transform(prep, **augment), prep.resize_size)
    sample_weights = None
    if args.balanced_sampler:
        sample_weights = class_weights([label for _, label in train_samples], len(labels))[
            torch.tensor([label for _, label in train_samples])].double()
    sampler = EpochSampler(len(train_set), args.batch_size, args.seed, world, sample_weights)
    train_loader = DataLoader(train_set, sampler=sampler, **loader_options)
    val_set = ImageFolderDataset(val_samples, eval_transform(prep), prep.resize_size)
    val_loader = DataLoader(val_set, sampler=ShardSampler(len(val_set), world), **loader_options)

    optimizer = make_optimizer(model, args.lr, args.weight_decay)
    total_steps = args.epochs * sampler.steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(int(args.warmup * total_steps), total_steps))
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    select = SELECT_BY[args.select_by]
    best = {"epoch": 0, "score": None}
    epoch, step, stale_epochs, totals = 1, 0, 0, {"loss": 0.0, "top1": 0, "count": 0, "lr": 0.0}
    rows = []
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        best, stale_epochs, run.bad_files = state["best"], state["stale_epochs"], state["bad_files"]
        epoch, step = state["epoch"], state["step"]
        if world.is_main:  # the saved sums cover all processes; the others start this epoch at zero
            totals = state["totals"]
        rows = read_metrics(args.output_dir / "metrics.csv", epoch - 1)
        say(f"Resuming {state['dir']} at epoch {epoch}, step {step} of {sampler.steps}")

    n_params = sum(p.numel() for p in model.parameters())
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    say(f"{len(labels)} classes, {len(train_samples)} training and {len(val_samples)} validation images | "
        f"{args.model}{' (random init)' if args.no_pretrained else ''} @ {prep.image_size}px, "
        f"{n_train:,} of {n_params:,} parameters trained | {device.type}, "
        f"{str(dtype).replace('torch.', '') if dtype else 'fp32'}"
        f"{f' | {world.size} processes, global batch {world.size * args.batch_size}' if world.distributed else ''}")

    def summed(sums: dict) -> dict:
        """The epoch's running training sums over all processes."""
        loss, top1, count = sum_across([sums["loss"], sums["top1"], sums["count"]], world, device)
        return {"loss": loss, "top1": int(top1), "count": int(count), "lr": sums["lr"]}

    def save_last(next_epoch: int, next_step: int, epoch_totals: dict) -> None:
        if world.is_main:
            save_model(model, prep, args.output_dir / "last", training_state={
                "epoch": next_epoch, "step": next_step, "totals": epoch_totals, "labels": labels, "data": fingerprint,
                "options": options_of(args), "best": best, "stale_epochs": stale_epochs, "bad_files": run.bad_files,
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict()})

    val_stats, last_totals = {"count": 0}, totals
    if epoch > args.epochs:
        say(f"{state['dir']} already finished all {args.epochs} epochs; raise --epochs to train on")
    with StopSignal(announce=world.is_main) as stop:
        while epoch <= args.epochs:
            epoch_start = time.time()
            if step == 0:  # metrics.csv shows the LR an epoch starts with, also when it was resumed
                totals["lr"] = scheduler.get_last_lr()[0]
            sampler.set_epoch(epoch, start_batch=step)
            train_set.epoch_seed = args.seed * 1000 + epoch  # augmentation depends on (seed, epoch, image) only
            step = train_epoch(run, train_loader, epoch, step, totals, stop, optimizer, scheduler, scaler, args)
            if step < sampler.steps:  # stopped by a signal: keep this step and the epoch's running sums
                save_last(epoch, step, summed(totals))
                say(f"Stopped in epoch {epoch} after step {step} of {sampler.steps}; saved {args.output_dir / 'last'}. "
                    f"Continue with: python train.py --resume {args.output_dir}", file=sys.stderr)
                return {**best, "stopped_by": stop.signum, "bad_files": run.bad_files}
            val_stats = evaluate(run, val_loader, len(labels), desc=f"epoch {epoch} val")
            run.bad_files = merge_dicts_across(run.bad_files, world)
            check_classes_readable(run.bad_files, train_samples, labels)
            totals = summed(totals)
            train_count = max(1, totals["count"])
            rows.append({"epoch": epoch, "train_loss": f"{totals['loss'] / train_count:.6f}",
                         "train_acc": f"{totals['top1'] / train_count:.6f}", "val_loss": f"{val_stats['loss']:.6f}",
                         "val_acc": f"{val_stats['acc']:.6f}", "val_top3": f"{val_stats['top3']:.6f}",
                         "val_macro_f1": f"{val_stats['macro_f1']:.6f}", "lr": f"{totals['lr']:.3e}",
                         "seconds": f"{time.time() - epoch_start:.1f}"})
            score = list(select(val_stats))
            improved = best["score"] is None or score > best["score"]
            if improved:
                best = {"epoch": epoch, "score": score, "select_by": args.select_by, "val_acc": val_stats["acc"],
                        "val_loss": val_stats["loss"], "val_macro_f1": val_stats["macro_f1"]}
                if world.is_main:
                    save_model(model, prep, args.output_dir / "best", info={
                        **best, "labels": labels, "model": args.model, "train_images": totals["count"],
                        "val_images": val_stats["count"]})
            stale_epochs = 0 if improved else stale_epochs + 1
            say(f"epoch {epoch}/{args.epochs}: train loss {rows[-1]['train_loss'][:6]} acc {rows[-1]['train_acc'][:5]} | "
                f"val loss {val_stats['loss']:.4f} acc {val_stats['acc']:.3f} top3 {val_stats['top3']:.3f} "
                f"macro-F1 {val_stats['macro_f1']:.3f} | {time.time() - epoch_start:.0f}s"
                f"{'  * best, saved' if improved else ''}")
            last_totals, totals = totals, {"loss": 0.0, "top1": 0, "count": 0, "lr": 0.0}
            epoch, step = epoch + 1, 0
            save_last(epoch, step, totals)
            if world.is_main:
                write_metrics(args.output_dir / "metrics.csv", rows)
            early_stop = args.patience and stale_epochs >= args.patience
            if early_stop:
                say(f"Early stop: no better validation score for {args.patience} epochs")
            if stop.signum or early_stop:
                break
    if stop.signum and epoch <= args.epochs:
        say(f"Stopped after epoch {epoch - 1}; saved {args.output_dir / 'last'}. "
            f"Continue with: python train.py --resume {args.output_dir}", file=sys.stderr)
    if run.bad_files:
        say(f"{len(run.bad_files)} unreadable image(s) were skipped:", file=sys.stderr)
        for path, reason in sorted(run.bad_files.items()):
            say(f"  {path}: {reason}", file=sys.stderr)
    minutes = (time.time() - started) / 60
    say(f"Done in {minutes:.1f} min. Best epoch {best['epoch']}: val acc {best.get('val_acc', 0):.3f}, "
        f"macro-F1 {best.get('val_macro_f1', 0):.3f}, loss {best.get('val_loss', math.inf):.4f}. "
        f"Model: {args.output_dir / 'best'}  (try: python predict.py --model {args.output_dir / 'best'} --image IMAGE)")
    return {**best, "minutes": minutes, "bad_files": run.bad_files, "stopped_by": stop.signum,
            "train_count": last_totals["count"], "val_count": val_stats["count"]}


def main(argv: list[str] | None = None) -> int:
    args, given = parse_args(argv)
    try:
        summary = train(args, given)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\nStopped at once. The last completed save can be continued with: "
              f"python train.py --resume {args.output_dir}", file=sys.stderr)
        return 130
    return 128 + summary["stopped_by"] if summary["stopped_by"] else 0


if __name__ == "__main__":
    sys.exit(main())
