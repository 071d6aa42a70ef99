"""Fine-tune a Vision Transformer on a folder of images (one sub-folder per class).

    python train.py --epochs 5 --batch-size 16
    torchrun --nproc_per_node=2 train.py --epochs 5 --batch-size 16     # one process per device
    python train.py --evaluate --model checkpoints/best --data other_photos   # or an .onnx / .xml export

Each epoch trains with AdamW (warm-up, then cosine decay; layer-wise LR decay; optionally the
head alone first), validates, and keeps the best model by the --select-by score. Outputs in
--output-dir: best/ and last/ (Hugging Face save_pretrained directories), metrics.csv, curves,
confusion matrix, per-class scores and the most confident mistakes (report.py).
Ctrl-C (or SIGTERM) finishes the current step, saves last/ and says how to resume.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from audit import audit_dataset, format_report
from checkpoint import check_output_dir, save_model
from classifier import (HelpFormatter, ImageFolderDataset, UserError, collate_skipping_bad, eval_transform,
                        fill_caches, load_splits, train_transform)
from devices import (PRECISION_HELP, PRECISIONS, autocast_dtype, configure_backends, keep_freed_memory, loader_workers,
                     pick_device, run_in_bf16)
from distributed import EpochSampler, ShardSampler, World, close_world, init_world, merge_dicts_across, sum_across
from features import HeadOnly, can_cache_features, extract_features
from loop import Run, check_classes_readable, evaluate, train_epoch
from metrics import SELECT_BY, metrics_row, new_totals, read_metrics, write_metrics
from model import PRESETS, create_model, freeze, set_backbone_dropout
from recipe import EMA, class_weights, make_optimizer, mix_batches, set_trainable, staged_warmup_cosine
from report import evaluate_checkpoint, report_run
from resume import StopSignal, data_fingerprint, ignore_stop_signals, options_of, prepare_resume
from tracking import make_tracker


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
    p.add_argument("--epochs", type=int, default=10, help="number of passes over the training set")
    p.add_argument("--batch-size", type=int, default=32,
                   help="images per training step and process (under torchrun the global batch is N times this)")
    p.add_argument("--grad-accum", type=int, default=1,
                   help="add up the gradients of N batches per optimizer step (effective batch: N x --batch-size)")
    p.add_argument("--grad-checkpointing", action="store_true",
                   help="recompute activations in the backward pass: much less memory, about 30%% slower")
    recipe = p.add_argument_group("fine-tuning recipe")
    recipe.add_argument("--lr", type=float, default=None,
                        help="peak learning rate (default: 5e-5 for pretrained weights, 3e-4 with --no-pretrained)")
    recipe.add_argument("--head-lr", type=float, default=None,
                        help="peak learning rate of the new classification head (default: 10 x --lr when "
                             "pretrained, else --lr)")
    recipe.add_argument("--layer-decay", type=float, default=1.0,
                        help="LR factor per encoder block from the top, so early blocks move less (1: off; "
                             "0.65-0.75 suits strong ImageNet backbones on long runs)")
    recipe.add_argument("--freeze", type=freeze_spec, default="none",
                        help="none: train all; backbone: train the head only; N: head + last N encoder blocks")
    recipe.add_argument("--freeze-epochs", type=int, default=0,
                        help="train the head alone for this many epochs first, then unfreeze (per --freeze) "
                             "with a new warm-up")
    recipe.add_argument("--weight-decay", type=float, default=0.05, help="AdamW weight decay (not on biases/norms)")
    recipe.add_argument("--warmup", type=float, default=0.1, help="fraction of each stage's steps spent warming up")
    recipe.add_argument("--grad-clip", type=float, default=1.0, help="clip the gradient norm to this (0: off)")
    recipe.add_argument("--dropout", type=float, default=0.1, help="dropout before the classification head")
    recipe.add_argument("--backbone-dropout", type=float, default=0.0,
                        help="dropout on the hidden states inside the transformer blocks")
    recipe.add_argument("--label-smoothing", type=float, default=0.1, help="label smoothing of the training loss")
    recipe.add_argument("--mixup", type=float, default=0.0, help="mixup alpha (0: off; 0.2-0.8 typical)")
    recipe.add_argument("--cutmix", type=float, default=0.0, help="cutmix alpha (0: off; 1.0 typical)")
    recipe.add_argument("--ema", type=float, default=0.0,
                        help="keep an exponential moving average of the weights with this decay (e.g. 0.999; "
                             "0: off); it is validated too and saved when better")
    for name in ("crop", "flip", "rotate", "color-jitter"):
        p.add_argument(f"--no-{name}", action="store_true", help=f"switch off the random {name} augmentation")
    select = p.add_argument_group("validation, imbalance and calibration")
    select.add_argument("--val-split", type=float, default=0.2,
                        help="fraction of each class held out for validation (ignored with train/ and val/)")
    select.add_argument("--patience", type=int, default=5,
                        help="stop after this many epochs without a better validation score (0: never)")
    select.add_argument("--select-by", default="accuracy", choices=list(SELECT_BY),
                        help="validation score that picks the best model (macro-f1 suits imbalanced classes)")
    select.add_argument("--class-weights", default="none", choices=["none", "auto"],
                        help="auto: weight the loss by inverse class frequency (for imbalanced classes)")
    select.add_argument("--balanced-sampler", action="store_true",
                        help="draw training images so every class is seen equally often (with replacement)")
    select.add_argument("--no-calibrate", dest="calibrate", action="store_false",
                        help="don't fit a softmax temperature on the validation set after training")
    select.add_argument("--evaluate", action="store_true",
                        help="only score the checkpoint --model (or an .onnx / .xml export of it) on the labelled "
                             "folder --data (metrics and pictures)")
    p.add_argument("--seed", type=int, default=42, help="seed for the split, augmentation and initialisation")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"],
                   help="where to train; auto picks a GPU when there is one")
    p.add_argument("--precision", default="auto", choices=PRECISIONS, help=PRECISION_HELP)
    p.add_argument("--num-workers", type=int, default=None,
                   help="DataLoader worker processes decoding and augmenting images (default: 0 on CPUs with up "
                        "to 4 cores, whose cores the model needs; 2 on bigger CPUs; up to 8 with a GPU)")
    p.add_argument("--cache-mb", type=int, default=4096,
                   help="decode and resize each image once into an in-memory uint8 cache of at most this many "
                        "MiB, so later epochs skip decoding (0: decode every epoch)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the model first (about a minute on a CPU): for long runs on GPUs; on a 2-core "
                        "CPU with bf16, steps were only 1%% faster (benchmarks/levers.py)")
    p.add_argument("--output-dir", type=Path, default=Path("checkpoints"),
                   help="where checkpoints and pictures go (--evaluate: default CHECKPOINT-evaluation)")
    p.add_argument("--track", choices=["mlflow", "tensorboard"], default=None,
                   help="log parameters, metrics, pictures and the best model to MLflow, or metrics to TensorBoard")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking server or store (default: a local store in --output-dir)")
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
              (args.grad_accum >= 1, "--grad-accum must be at least 1"),
              (0 < args.val_split < 1, "--val-split must be between 0 and 1"),
              (args.lr is None or args.lr > 0, "--lr must be positive"),
              (args.head_lr is None or args.head_lr > 0, "--head-lr must be positive"),
              (0 < args.layer_decay <= 1, "--layer-decay must be in (0, 1]"),
              (args.weight_decay >= 0, "--weight-decay must not be negative"),
              (0 <= args.warmup < 1, "--warmup is a fraction of the steps, from 0 to below 1"),
              (all(0 <= p < 1 for p in (args.dropout, args.backbone_dropout, args.label_smoothing)),
               "--dropout, --backbone-dropout and --label-smoothing: from 0 to below 1"),
              (args.mixup >= 0 and args.cutmix >= 0, "--mixup and --cutmix must not be negative"),
              (0 <= args.ema < 1, "--ema is a decay from 0 (off) to below 1, e.g. 0.999"),
              (args.grad_clip >= 0, "--grad-clip must not be negative"),
              (min(args.patience, args.num_workers or 0, args.freeze_epochs, args.cache_mb) >= 0,
               "--patience, --num-workers, --freeze-epochs and --cache-mb must be >= 0"),
              (args.image_size is None or args.image_size >= 16, "--image-size must be at least 16")]
    for ok, message in checks:
        if not ok:
            parser.error(message)
    pretrained = not args.no_pretrained
    args.lr = args.lr or (5e-5 if pretrained else 3e-4)
    args.head_lr = args.head_lr or (10 * args.lr if pretrained else args.lr)
    for action in parser._actions:  # parse again with no defaults: what remains was typed by the user
        action.default = argparse.SUPPRESS
    return args, set(vars(parser.parse_args(argv)))


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
    set_backbone_dropout(model, args.backbone_dropout)
    freeze(model, args.freeze)
    trainable = {id(p) for p in model.parameters() if p.requires_grad}  # what --freeze leaves trainable
    if args.grad_checkpointing:  # renamed in transformers 5.x; the old name still works before that
        (getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable)()
    model.to(device)
    configure_backends(device)
    run_in_bf16(model, device, dtype, training=True)
    model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    if world.is_main:  # best + last + optimizer moments + EMA + one copy while a save is swapped in
        check_output_dir(args.output_dir, needed_bytes=(6 + (args.ema > 0)) * model_bytes + 2**20)
    run = Run(model, model, device, dtype, world, args, mix=mix_batches(len(labels), args.mixup, args.cutmix),
              ema=EMA(model, args.ema) if args.ema > 0 else None)
    train_labels = [label for _, label in train_samples]
    if args.class_weights == "auto":
        run.loss_weight = class_weights(train_labels, len(labels)).to(device)

    augment = dict(crop=not args.no_crop, flip=not args.no_flip, rotate=not args.no_rotate,
                   color_jitter=not args.no_color_jitter)
    args.num_workers = loader_workers(args.num_workers, device)
    loader_options = dict(batch_size=args.batch_size, num_workers=args.num_workers, collate_fn=collate_skipping_bad,
                          pin_memory=device.type == "cuda", worker_init_fn=ignore_stop_signals)
    train_set = ImageFolderDataset(train_samples, train_transform(prep, **augment), prep.resize_size)
    val_set = ImageFolderDataset(val_samples, eval_transform(prep), prep.resize_size)
    if args.cache_mb:  # before the loaders fork their workers, which then share the cache
        say(fill_caches([train_set, val_set], args.cache_mb * 2**20))
    train_data, val_data, as_net = train_set, val_set, (lambda net: net)
    if can_cache_features(args):  # nothing changes between epochs: run the frozen backbone once, not every epoch
        start = time.time()
        train_data, val_data = (extract_features(model, s, args.batch_size, device, dtype) for s in (train_set, val_set))
        as_net = HeadOnly
        train_set.cache.clear()  # no longer read: free its memory (the validation images serve the report)
        say(f"Frozen backbone, no augmentation: computed its features once in {time.time() - start:.1f}s; "
            f"the epochs train the head on them")
    sample_weights = None
    if args.balanced_sampler:
        sample_weights = class_weights(train_labels, len(labels))[torch.tensor(train_labels)].double()
    sampler = EpochSampler(len(train_data), args.batch_size * args.grad_accum, args.seed, world, sample_weights)
    train_loader = DataLoader(train_data, sampler=sampler, **loader_options)
    val_loader = DataLoader(val_data, sampler=ShardSampler(len(val_data), world), **loader_options)

    run.optimizer = make_optimizer(model, args.lr, args.weight_decay, args.layer_decay, args.head_lr)
    head_epochs = min(args.freeze_epochs, args.epochs)
    stages = [n * sampler.steps for n in (head_epochs, args.epochs - head_epochs) if n]
    run.scheduler = torch.optim.lr_scheduler.LambdaLR(run.optimizer, staged_warmup_cosine(stages, args.warmup))
    run.scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    select = SELECT_BY[args.select_by]
    best = {"epoch": 0, "score": None}
    epoch, step, stale_epochs, totals = 1, 0, 0, new_totals()
    rows = []
    if state is not None:
        for part in ("optimizer", "scheduler", "scaler") + (("ema",) if run.ema else ()):
            getattr(run, part).load_state_dict(state[part])
        best, stale_epochs, run.bad_files = state["best"], state["stale_epochs"], state["bad_files"]
        epoch, step = state["epoch"], state["step"]
        if world.is_main:  # the saved sums cover all processes; the others start this epoch at zero
            totals = state["totals"]
        rows = read_metrics(args.output_dir / "metrics.csv", epoch - 1)
        say(f"Resuming {state['dir']} at epoch {epoch}, step {step} of {sampler.steps}")

    n_params = sum(p.numel() for p in model.parameters())
    say(f"{len(labels)} classes, {len(train_samples)} training and {len(val_samples)} validation images | "
        f"{args.model}{' (random init)' if args.no_pretrained else ''} @ {prep.image_size}px, "
        f"{sum(p.numel() for p in model.parameters() if id(p) in trainable):,} of {n_params:,} "
        f"parameters trained | {device.type}, {str(dtype).replace('torch.', '') if dtype else 'fp32'}"
        f"{f' | {world.size} processes, global batch {world.size * args.batch_size * args.grad_accum}' if world.distributed else ''}")

    def summed(sums: dict) -> dict:
        """The epoch's running training sums over all processes."""
        loss, top1, count = sum_across([sums["loss"], sums["top1"], sums["count"]], world, device)
        return {"loss": loss, "top1": int(top1), "count": int(count), "lr": sums["lr"]}

    def save_last(next_epoch: int, next_step: int, epoch_totals: dict) -> None:
        if world.is_main:
            save_model(model, prep, args.output_dir / "last", training_state={
                "epoch": next_epoch, "step": next_step, "totals": epoch_totals, "labels": labels, "data": fingerprint,
                "options": options_of(args), "best": best, "stale_epochs": stale_epochs, "bad_files": run.bad_files,
                **{part: getattr(run, part).state_dict() for part in ("optimizer", "scheduler", "scaler")},
                **({"ema": run.ema.state_dict()} if run.ema else {})})

    val_stats, last_totals, head_only = {"count": 0}, totals, None
    if epoch > args.epochs:
        say(f"{state['dir']} already finished all {args.epochs} epochs; raise --epochs to train on")
    tracker = make_tracker(args.track if world.is_main else None, args.tracking_uri, args.output_dir)
    with StopSignal(announce=world.is_main) as stop, tracker:
        tracker.log_params(options_of(args))
        while epoch <= args.epochs:
            epoch_start = time.time()
            if head_only != (epoch <= head_epochs):  # --freeze-epochs: the head alone first, then the rest
                head_only = epoch <= head_epochs
                set_trainable(model, head_only, trainable)
                wrapped = DistributedDataParallel(as_net(model)) if world.distributed else as_net(model)
                run.model = torch.compile(wrapped) if args.compile else wrapped
            if step == 0:  # metrics.csv shows the LR an epoch starts with, also when it was resumed
                totals["lr"] = run.scheduler.get_last_lr()[-1]
            sampler.set_epoch(epoch, start_batch=step)
            train_data.epoch_seed = args.seed * 1000 + epoch  # augmentation depends on (seed, epoch, image) only
            step = train_epoch(run, train_loader, epoch, step, totals, stop)
            if step < sampler.steps:  # stopped by a signal: keep this step and the epoch's running sums
                save_last(epoch, step, summed(totals))
                say(f"Stopped in epoch {epoch} after step {step} of {sampler.steps}; saved {args.output_dir / 'last'}. "
                    f"Continue with: python train.py --resume {args.output_dir}", file=sys.stderr)
                return {**best, "stopped_by": stop.signum, "bad_files": run.bad_files}
            val_stats = evaluate(run, as_net(model), val_loader, len(labels), f"epoch {epoch} val")
            ema_stats = (evaluate(run, as_net(run.ema.model), val_loader, len(labels), f"epoch {epoch} val (EMA)")
                         if run.ema else None)
            run.bad_files = merge_dicts_across(run.bad_files, world)
            check_classes_readable(run.bad_files, train_samples, labels)
            totals = summed(totals)
            rows.append(metrics_row(epoch, totals, val_stats, ema_stats, time.time() - epoch_start))
            tracker.log_epoch(epoch, rows[-1])
            use_ema = ema_stats is not None and select(ema_stats) > select(val_stats)
            chosen = ema_stats if use_ema else val_stats
            improved = best["score"] is None or list(select(chosen)) > best["score"]
            if improved:
                best = {"epoch": epoch, "score": list(select(chosen)), "select_by": args.select_by,
                        "weights": "ema" if use_ema else "raw", "val_acc": chosen["acc"], "val_loss": chosen["loss"],
                        "val_macro_f1": chosen["macro_f1"]}
                if world.is_main:
                    save_model(run.ema.model if use_ema else model, prep, args.output_dir / "best", info={
                        **best, "labels": labels, "model": args.model, "train_images": totals["count"],
                        "val_images": chosen["count"]})
            stale_epochs = 0 if improved else stale_epochs + 1
            ema_note = f" | EMA acc {ema_stats['acc']:.3f}" if ema_stats else ""
            say(f"epoch {epoch}/{args.epochs}: train loss {rows[-1]['train_loss'][:6]} acc {rows[-1]['train_acc'][:5]} | "
                f"val loss {val_stats['loss']:.4f} acc {val_stats['acc']:.3f} top3 {val_stats['top3']:.3f} "
                f"macro-F1 {val_stats['macro_f1']:.3f}{ema_note}"
                f" | {time.time() - epoch_start:.0f}s{'  * best, saved' if improved else ''}")
            last_totals, totals = totals, new_totals()
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
        elif world.is_main and best["epoch"]:
            single = replace(run, world=World())  # the report evaluates the best model in this process alone
            full_val = DataLoader(val_set, **loader_options)
            best.update(report_run(single, args.output_dir, labels, full_val, rows, args.calibrate))
            tracker.log_files(sorted(args.output_dir.glob("*.png")) + sorted(args.output_dir.glob("*.csv")))
            tracker.log_model(args.output_dir / "best")
    if run.bad_files:
        say(f"{len(run.bad_files)} unreadable image(s) were skipped:", file=sys.stderr)
        for path, reason in sorted(run.bad_files.items()):
            say(f"  {path}: {reason}", file=sys.stderr)
    minutes = (time.time() - started) / 60
    if best["epoch"]:
        say(f"Done in {minutes:.1f} min. Best epoch {best['epoch']} ({best['weights']} weights): val acc "
            f"{best['val_acc']:.3f}, macro-F1 {best['val_macro_f1']:.3f}, loss {best['val_loss']:.4f}. "
            f"Model: {args.output_dir / 'best'}  (try: python predict.py --model {args.output_dir / 'best'} --image IMAGE)")
    return {**best, "minutes": minutes, "bad_files": run.bad_files, "stopped_by": stop.signum,
            "train_count": last_totals["count"], "val_count": val_stats["count"]}


def main(argv: list[str] | None = None) -> int:
    args, given = parse_args(argv)
    keep_freed_memory()
    try:
        if args.evaluate:
            evaluate_checkpoint(args, given)
            return 0
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
