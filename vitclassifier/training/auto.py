"""``--recipe auto``: short measurements on the user's own data, then the decisions (auto_recipe.decide),
before the run is built.

``plan_recipe`` runs once, before the Trainer, on a fresh run only (a resumed run continues with the
options its first session decided, saved with its state). It builds the run's model exactly as the
Trainer will (setup.build_model seeds the initialisation), embeds the training and validation images
with the evaluation transform (the cached-features path, features.extract_features), fits the linear
probe (pre-trained weights only: features of random weights say nothing), checks the flip on the
probe's validation outputs (label_checks.py), and runs the LR range test with the run's own step
(autocast, BatchAugment, mixing, clipping; lr_finder.py). Nothing of it stays in the run but the
probe's head, which the Trainer loads into its model (LP-FT); the measurements are seeded, so a run
stays a pure function of its options, its data and its seed. Under torchrun every process measures
and the main process's decisions are the ones all take.
"""
from __future__ import annotations

import statistics
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from vitclassifier.config import TrainConfig
from vitclassifier.data.augment import BatchAugment, train_decode
from vitclassifier.data.dataset import collate_skipping_bad
from vitclassifier.data.sources import Source
from vitclassifier.data.transforms import Preprocessing, eval_transform
from vitclassifier.devices import autocast, autocast_dtype, pick_device
from vitclassifier.errors import UserError
from vitclassifier.reporting.plots import write_lr_curve
from vitclassifier.text import printable
from vitclassifier.training.auto_recipe import Facts, as_json, decide
from vitclassifier.training.crossval import cross_validate
from vitclassifier.training.distributed import World, augmentation_seeds, on_main_process
from vitclassifier.training.features import extract_features
from vitclassifier.training.label_checks import Flipped, check_augmentation
from vitclassifier.training.lr_finder import LRCurve, lr_range_test
from vitclassifier.training.multilabel import check_options
from vitclassifier.training.output import refuse_unclaimable
from vitclassifier.training.probe import Probe, feature_tensors, fit_probe
from vitclassifier.training.recipe import class_weights, make_optimizer, mix_batches
from vitclassifier.training.setup import build_model, main_print, open_data

SWEEP_STEPS = 40  # the range test's steps: a few dozen (fastai's lr_find takes 100 on large sets)
MIN_SWEEP_STEPS = 20  # fewer steps make no curve: the range test is then skipped
SWEEP_SHARE = 0.25  # ... and under --recipe auto it costs at most this share of the fixed recipe's training


@dataclass
class Plan:
    """What the automatic recipe hands the Trainer: the probe's head to start from (None: the model's
    own new head) and the record for best/training_info.json ("recipe", "probe_val_acc")."""
    head: Probe | None
    info: dict


@dataclass
class Measured:
    """The measurements' results (None: not measured) and what they took."""
    curve: LRCurve | None = None
    probe: Probe | None = None
    flip: object = None  # label_checks.LabelCheck
    work: float = 0.0  # the measurements' work in training images (a forward pass alone: a third of one)
    notes: tuple[str, ...] = ()


def plan_run(config: TrainConfig, given: set[str], world: World,
             device: torch.device) -> tuple[TrainConfig, Plan]:
    """A fresh run's plan: --folds' cross-validation first (crossval.py), then the recipe (plan_recipe);
    the folds' summary recorded with the recipe's decisions."""
    if config.recipe.recipe == "fixed" and not config.recipe.folds:
        return config, Plan(None, {"recipe": {"recipe": "fixed"}})
    source = open_data(config, quiet=True)
    check_options(config, source.task_line() == "multi-label")  # the task's refusals before any work
    folds = cross_validate(config, source, world, device) if config.recipe.folds else None
    config, plan = plan_recipe(config, given, world, device, source)
    if folds is not None:
        plan.info["folds"] = folds
    return config, plan


def plan_recipe(config: TrainConfig, given: set[str], world: World, device: torch.device,
                source: Source) -> tuple[TrainConfig, Plan]:
    """The run's options decided from its data, model and measurements (those in ``given``, typed by
    the user, kept); each decision printed in one line. ``--recipe fixed``: the options as they are."""
    if config.recipe.recipe == "fixed":
        return config, Plan(None, {"recipe": {"recipe": "fixed"}})
    say, started = main_print(world), time.time()
    if source.streamed or source.task_line() == "multi-label":
        why = ("streamed shards are read in order only" if source.streamed
               else "several labels per image: the probe and flip check score one class")
        reason = f"{why}, so nothing was measured: the fixed recipe's options"
        say(f"Automatic recipe: {reason}")
        return config, Plan(None, {"recipe": {"recipe": "auto", "skipped": reason}})
    dtype, runtime = autocast_dtype(device, config.runtime.precision), config.runtime
    model, prep, _ = build_model(config, source.labels, device, dtype, None)  # weights missing: said first
    # the measurements take minutes: --output-dir's refusals come before them (claimed, locked, later)
    on_main_process(world, device, lambda: refuse_unclaimable(
        runtime.output_dir, config.data.folder, source.image_folders(), False, runtime.overwrite))
    say("Automatic recipe: measuring on your data (--recipe fixed skips this) ...")
    measured = measure(config, given, source, model, prep, device, dtype)
    del model
    facts = make_facts(config, source, prep, measured)
    decisions = decide(facts, config.as_options(), given)
    say(f"Automatic recipe, measured in {time.time() - started:.0f}s:")
    for note in measured.notes:
        say(f"  {note}")
    for decision in decisions:
        say(f"  {decision.line()}")
    info = {"recipe": {"recipe": "auto", **as_json(facts, decisions)}}
    if measured.probe is not None:
        info["probe_val_acc"] = measured.probe.val_accuracy
    values, plan = agreed(world, ({decision.option: decision.value for decision in decisions},
                                  Plan(measured.probe, info)))
    return config.replace(**values), plan


def agreed(world: World, value: object) -> object:
    """The main process's value on every process (measurements on GPUs need not agree to the bit)."""
    if not world.distributed:
        return value
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def find_lr(config: TrainConfig, given: set[str], picture: Path) -> LRCurve:
    """``train.py --lr-find``: the range test alone, from the head the run would start from (the probe's
    under --recipe auto with pre-trained weights); prints the suggestion and saves the curve."""
    source, device = open_data(config, quiet=True), pick_device(config.runtime.device)
    if source.streamed:
        raise UserError("--lr-find needs a listed data set: streamed shards are read in order only")
    if source.task_line() == "multi-label":
        raise UserError("--lr-find measures one class per image: it does not take several labels per image")
    dtype = autocast_dtype(device, config.runtime.precision)
    model, prep, _ = build_model(config, source.labels, device, dtype, None)
    curve = measure(config, given, source, model, prep, device, dtype, lr_find=True).curve
    picture.parent.mkdir(parents=True, exist_ok=True)
    write_lr_curve(curve.lrs, curve.losses, curve.suggestion, picture)
    print(f"LR range test: {len(curve.lrs)} steps of {config.data.batch_size} training images, "
          f"LR {curve.lrs[0]:.2g} to {curve.lrs[-1]:.2g}; {curve.stopped}.")
    print(f"Suggested peak LR {curve.suggestion:.2g} (--lr), head LR {curve.head_lr:.2g} (--head-lr): a "
          f"tenth of the LR at the lowest loss. Loss against LR: {printable(picture)}")
    return curve


def measure(config: TrainConfig, given: set[str], source: Source, model: torch.nn.Module, prep: Preprocessing,
            device: torch.device, dtype: torch.dtype | None, lr_find: bool = False) -> Measured:
    """The probe and the flip check (pre-trained weights, --recipe auto), then the LR range test from the
    probe's head (``lr_find``: the range test the user asked for, no flip check, always SWEEP_STEPS)."""
    measured, batch = Measured(), config.data.batch_size
    if config.model.pretrained and config.recipe.recipe == "auto":
        transform = eval_transform(prep)
        train_set = source.training_data(transform, prep.resize_size)
        val_set = source.validation_data(transform, prep.resize_size, batch)
        X, y = feature_tensors(extract_features(model, train_set, batch, device, dtype))
        val_X, val_y = feature_tensors(extract_features(model, val_set, batch, device, dtype))
        measured.work += (len(train_set) + len(val_set)) / 3
        if len(y) and len(val_y):
            measured.probe = fit_probe(X, y, len(source.labels), val_X, val_y, seed=config.recipe.seed)
            measured.probe.load_into(model)
        if measured.probe is not None and not lr_find and not config.data.no_flip:
            flipped_X, _ = feature_tensors(extract_features(model, Flipped(val_set), batch, device, dtype))
            measured.work += len(val_set) / 3
            measured.flip = check_augmentation("flip", measured.probe.logits(val_X),
                                               measured.probe.logits(flipped_X), val_y)
    elif not config.model.pretrained:
        measured.notes += ("random weights: no linear probe (features of random weights say nothing), so no "
                           "LP-FT and no flip check",)
    steps = SWEEP_STEPS if lr_find else sweep_steps(config, len(source.train()))
    if steps < MIN_SWEEP_STEPS:
        measured.notes += (f"no LR range test: {MIN_SWEEP_STEPS} steps of {batch} images would cost more "
                           f"than {SWEEP_SHARE:.0%} of the fixed recipe's {config.recipe.epochs} epochs on "
                           f"{len(source.train())} training images",)
        return measured
    same_lr = measured.probe is not None and "head_lr" not in given  # decide gives the head the backbone's LR
    measured.curve = sweep(config, source, model, prep, device, dtype, same_lr, steps)
    measured.work += len(measured.curve.lrs) * batch
    return measured


def sweep_steps(config: TrainConfig, train_images: int) -> int:
    """The range test's steps under --recipe auto: SWEEP_STEPS, fewer when they would cost more than
    SWEEP_SHARE of the fixed recipe's training (a set of a few dozen images)."""
    affordable = SWEEP_SHARE * config.recipe.epochs * train_images / config.data.batch_size
    return min(SWEEP_STEPS, int(affordable))


class ReadableBatches:
    """A loader's batches that hold at least one readable image, as often as iterated."""

    def __init__(self, loader: DataLoader):
        self.loader = loader

    def __iter__(self):
        return (batch for batch in self.loader if batch[0] is not None)


def sweep(config: TrainConfig, source: Source, model: torch.nn.Module, prep: Preprocessing,
          device: torch.device, dtype: torch.dtype | None, same_lr: bool, steps: int) -> LRCurve:
    """The LR range test on the training split, with the run's step; the model is restored after it."""
    data, recipe = config.data, config.recipe
    images = source.training_data(train_decode(prep, data.augment["crop"], data.augment["rotate"]),
                                  prep.resize_size)
    torch.manual_seed(recipe.seed % 2**63)  # the sweep's shuffling, dropout and mixing
    loader = DataLoader(images, batch_size=data.batch_size, shuffle=True, collate_fn=collate_skipping_bad,
                        generator=torch.Generator().manual_seed(recipe.seed % 2**63))
    head_lr = recipe.lr if same_lr else recipe.head_lr
    optimizer = make_optimizer(model, recipe.lr, recipe.weight_decay, recipe.layer_decay, head_lr)
    step = training_step(config, source, model, prep, optimizer, device, dtype)
    return lr_range_test(model, optimizer, step, ReadableBatches(loader), recipe.lr, head_lr,
                         steps=steps)


def training_step(config: TrainConfig, source: Source, model: torch.nn.Module, prep: Preprocessing,
                  optimizer: torch.optim.Optimizer, device: torch.device,
                  dtype: torch.dtype | None) -> Callable[[tuple], float]:
    """Trainer.forward_backward and its optimizer step on one batch: augmented on the device (epoch 0's
    seeds, an epoch training never uses), mixed, the smoothed loss, clipped gradients."""
    data, recipe = config.data, config.recipe
    augment, index = BatchAugment(prep, **data.augment), source.sample_index()
    mix = mix_batches(len(source.labels), recipe.mixup, recipe.cutmix)
    drawn: Counter = Counter()
    loss_weight = (class_weights(source.train_labels(), len(source.labels)).to(device)
                   if recipe.class_weights == "auto" else None)
    trainable = [p for p in model.parameters() if p.requires_grad]

    def step(batch: tuple) -> float:
        images, labels, paths, _ = batch
        images, labels = images.to(device), labels.to(device)
        seeds = augmentation_seeds(recipe, 0, paths, index, drawn)
        inputs, targets = augment(images, seeds), labels
        if mix:
            inputs, targets = mix(inputs, labels)
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, dtype):
            logits = model(pixel_values=inputs).logits.float()
            loss = F.cross_entropy(logits, targets, weight=loss_weight,
                                   label_smoothing=recipe.label_smoothing)
        loss.backward()
        if recipe.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(trainable, recipe.grad_clip)
        optimizer.step()
        return loss.item()

    return step


def loss_dip(losses: list[float]) -> float:
    """How far a range test's smoothed loss fell below where it started: 0.3 is 30%."""
    return round(1 - min(losses) / max(losses[0], 1e-12), 3)


def make_facts(config: TrainConfig, source: Source, prep: Preprocessing, measured: Measured) -> Facts:
    """What decide() reads: the data's counts, the model, the measurements and their cost in epochs
    (counted in images, not timed: the decisions, and so the run, must not depend on the machine's load)."""
    counts = sorted(Counter(source.train_labels()).get(i, 0) for i in range(len(source.labels)))
    flip, curve = measured.flip, measured.curve
    return Facts(
        train_images=len(source.train()), images_per_class_min=counts[0],
        images_per_class_median=float(statistics.median(counts)), num_classes=len(source.labels),
        image_size_median=prep.image_size, pretrained=config.model.pretrained, model_name=config.model.name,
        batch_size=config.data.batch_size * config.recipe.grad_accum,
        lr_suggestion=float(f"{curve.suggestion:.2g}") if curve else None,  # two digits: the test's precision
        lr_dip=loss_dip(curve.losses) if curve and curve.losses else None,
        probe_accuracy=measured.probe.val_accuracy if measured.probe else None,
        flip_switch_off=flip.switch_off if flip else None, flip_reason=flip.reason if flip else "",
        measurement_epochs=round(measured.work / max(1, len(source.train())), 2))
