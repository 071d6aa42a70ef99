"""One training epoch and one evaluation pass: the inner loops of train.py.

train_epoch counts optimizer steps (``--grad-accum`` micro-batches each); evaluate sums counts and
a confusion matrix, so its metrics are exact over the whole set, also across processes.
"""
from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from vitclassifier.config import RecipeOptions
from vitclassifier.devices import autocast
from vitclassifier.errors import UserError
from vitclassifier.reporting.metrics import macro_f1
from vitclassifier.training.distributed import World, epoch_seed, sum_across, sum_tensor_across
from vitclassifier.training.recipe import EMA


@dataclass
class Run:
    """What the epoch functions share."""
    model: torch.nn.Module  # wrapped in DistributedDataParallel under torchrun
    net: torch.nn.Module  # the plain model: evaluated and saved
    device: torch.device
    dtype: torch.dtype | None
    world: World
    recipe: RecipeOptions
    optimizer: torch.optim.Optimizer | None = None
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
    scaler: torch.amp.GradScaler | None = None
    loss_weight: torch.Tensor | None = None
    mix: object = None  # mixup/cutmix batch transform
    ema: EMA | None = None
    augment: Callable[[torch.Tensor, list[int]], torch.Tensor] | None = None  # on-device augmentation
    sample_index: dict[str, int] = field(default_factory=dict)  # training image path -> its index
    drawn: Counter = field(default_factory=Counter)  # this epoch's draws of each training image so far
    bad_files: dict = field(default_factory=dict)

    def autocast(self):
        return autocast(self.device, self.dtype)

    def note_bad(self, bad: list[tuple[str, str]]) -> None:
        for path, reason in bad:
            if path not in self.bad_files:
                tqdm.write(f"warning: skipping {path}: {reason}", file=sys.stderr)
                self.bad_files[path] = reason

    def bar(self, loader: DataLoader, desc: str):
        return tqdm(
            loader, desc=desc, leave=False, dynamic_ncols=True, disable=None if self.world.is_main else True
        )


def sum_dtype(device: torch.device) -> torch.dtype:
    """Running sums kept on the device (read once at the end, so the CPU never waits for the GPU
    mid-loop): float64 keeps counts exact; Apple's MPS has no float64."""
    return torch.float32 if device.type == "mps" else torch.float64


def check_classes_readable(bad_files: dict, samples: list[tuple[Path, int]], labels: list[str]) -> None:
    """Training cannot learn a class whose every training image is unreadable: say so."""
    for index, name in enumerate(labels):
        paths = [str(path) for path, label in samples if label == index]
        if all(path in bad_files for path in paths):
            raise UserError(
                f"every training image of class {name!r} is unreadable ({len(paths)} files, listed "
                f"above); fix or remove them, or remove the class folder"
            )


def step_seed(recipe: RecipeOptions, epoch: int, step: int, micro: int, rank: int) -> int:
    """Dropout and mixing of a micro-batch depend only on (seed, epoch, step, micro-batch, process):
    a resumed run repeats them."""
    return ((((epoch_seed(recipe.seed, epoch)) * 100_003 + step) * 64 + micro) * 101 + rank) % 2**63


def image_seed(recipe: RecipeOptions, epoch: int, index: int, occurrence: int = 0) -> int:
    """The augmentation of training image ``index`` in ``epoch`` depends on (seed, epoch, image) only:
    the same whatever batch or micro-batch the image lands in, and on a resume. ``occurrence``: how
    often this process drew the image before in this epoch (--balanced-sampler draws with
    replacement), so that each draw gets a view of its own."""
    return ((epoch_seed(recipe.seed, epoch) * 1_000_003 + index) * 1_000_003 + occurrence) % 2**63


def augmentation_seeds(run: Run, epoch: int, paths: list[str]) -> list[int]:
    """One seed per image of the batch (image_seed), counting the draws of this epoch in ``run.drawn``."""
    seeds = []
    for path in paths:
        index = run.sample_index[path]
        seeds.append(image_seed(run.recipe, epoch, index, run.drawn[index]))
        run.drawn[index] += 1
    return seeds


def forward_backward(run: Run, images: torch.Tensor, labels: torch.Tensor,
                     seeds: list[int] | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of one micro-batch's summed loss (optimizer_step divides them by the images of the whole
    step); returns its mean loss and top-1 hits (device tensors)."""
    images, labels = images.to(run.device, non_blocking=True), labels.to(run.device, non_blocking=True)
    if run.augment is not None:  # batched augmentation on the device (uint8 in, normalised float out)
        images = run.augment(images, seeds)
    inputs, targets = run.mix(images, labels) if run.mix else (images, labels)
    with run.autocast():
        logits = run.model(pixel_values=inputs).logits.float()
        loss = F.cross_entropy(logits, targets, weight=run.loss_weight,
                               label_smoothing=run.recipe.label_smoothing)
    run.scaler.scale(loss * len(labels)).backward()
    return loss.detach(), (logits.argmax(1) == labels).sum()  # hits against the true, unmixed labels


def optimizer_step(run: Run, images: int) -> None:
    """Turn the summed gradients into the mean over the step's ``images`` (whatever the sizes of its
    micro-batches: exactly the big batch's gradient, also for an epoch's smaller last step), clip,
    step, and update the EMA of the weights."""
    for parameter in run.model.parameters():
        if parameter.grad is not None:
            parameter.grad.div_(images)
    if run.recipe.grad_clip > 0:
        run.scaler.unscale_(run.optimizer)
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), run.recipe.grad_clip)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.optimizer.zero_grad(set_to_none=True)
    if run.ema is not None:
        run.ema.update(run.net)


def finish_step(run: Run, images: int) -> None:
    """The optimizer step (none if every image of the step was unreadable), then the schedule's."""
    if images:
        optimizer_step(run, images)
    run.scheduler.step()


def train_epoch(run: Run, loader: DataLoader, epoch: int, first_step: int, totals: dict, stop) -> int:
    """Train from optimizer step ``first_step`` of ``epoch``, adding into ``totals``. Returns the
    number of the next step: all of them, or fewer when a stop was requested."""
    run.model.train()
    step, micro, step_images = first_step, 0, 0
    # Loss and top-1 sums stay on the device (sum_dtype): reading them every step would make the CPU
    # wait for the GPU instead of queueing the next step while it computes.
    running = torch.zeros(2, dtype=sum_dtype(run.device), device=run.device)
    count = totals["count"]
    bar = run.bar(loader, f"epoch {epoch}/{run.recipe.epochs} train")
    for images, labels, paths, bad in bar:
        run.note_bad(bad)
        flags = [float(stop.signum > 0), float(images is None)]
        stop_now, some_empty = sum_across(flags, run.world, run.device)
        if stop_now and micro == 0:  # stop between optimizer steps, never inside one
            break
        micro += 1
        if not some_empty:  # a batch of only unreadable files: every process skips it together
            torch.manual_seed(step_seed(run.recipe, epoch, step, micro, run.world.rank))
            seeds = augmentation_seeds(run, epoch, paths)
            loss, hits = forward_backward(run, images, labels, seeds)
            running += torch.stack([loss.to(running.dtype) * len(labels), hits.to(running.dtype)])
            step_images, count = step_images + len(labels), count + len(labels)
            if not bar.disable and step % 10 == 0:  # shown on a terminal only
                loss_sum, top1 = (totals[k] + v for k, v in zip(("loss", "top1"), running.tolist()))
                bar.set_postfix(loss=f"{loss_sum / count:.3f}", acc=f"{top1 / count:.3f}")
        if micro < run.recipe.grad_accum:
            continue
        finish_step(run, step_images)
        step, micro, step_images = step + 1, 0, 0
    else:  # the loader ran out (no stop): a last step with fewer micro-batches than --grad-accum is taken
        if micro:
            finish_step(run, step_images)
            step += 1
    loss_sum, top1 = running.tolist()
    totals.update(loss=totals["loss"] + loss_sum, top1=totals["top1"] + round(top1), count=count)
    return step


@torch.inference_mode()
def evaluate(
    run: Run,
    net: torch.nn.Module,
    loader: DataLoader,
    num_classes: int,
    desc: str,
    keep_outputs: bool = False,
) -> dict:
    """Loss, top-1, top-3 and macro-F1 of ``net`` over the whole set (summed over processes), and
    the confusion matrix. ``keep_outputs`` also returns every logit row, label and path (one process)."""
    net.eval()
    sums = torch.zeros(3, dtype=sum_dtype(run.device), device=run.device)  # loss, top-1 and top-3 hits
    count = 0
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=run.device)
    outputs = {"logits": [], "labels": [], "paths": []}
    for images, labels, paths, bad in run.bar(loader, desc):
        run.note_bad(bad)
        if images is None:
            continue
        images, labels = images.to(run.device, non_blocking=True), labels.to(run.device, non_blocking=True)
        with run.autocast():
            logits = net(pixel_values=images).logits.float()
        top = logits.topk(min(3, num_classes), dim=1).indices
        sums += torch.stack(
            [
                F.cross_entropy(logits, labels, reduction="sum"),
                (top[:, 0] == labels).sum(),
                (top == labels[:, None]).any(dim=1).sum(),
            ]
        ).to(sums.dtype)
        count += len(labels)
        confusion += torch.bincount(labels * num_classes + top[:, 0], minlength=num_classes**2).view_as(
            confusion
        )
        if keep_outputs:
            outputs["logits"].append(logits.cpu())
            outputs["labels"].append(labels.cpu())
            outputs["paths"] += paths
    loss, top1, top3, count = sum_across(sums.tolist() + [count], run.world, run.device)
    confusion = sum_tensor_across(confusion, run.world).cpu()
    count_or_1 = max(1.0, count)
    stats = {
        "loss": loss / count_or_1,
        "acc": top1 / count_or_1,
        "top3": top3 / count_or_1,
        "macro_f1": macro_f1(confusion),
        "count": int(count),
        "confusion": confusion,
    }
    if keep_outputs and outputs["logits"]:
        stats.update(
            logits=torch.cat(outputs["logits"]), labels=torch.cat(outputs["labels"]), paths=outputs["paths"]
        )
    return stats
