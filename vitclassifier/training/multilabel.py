"""Training with several labels per image: sigmoid outputs with binary cross-entropy, or the asymmetric
loss (ASL, Ridnik et al. 2021) for sets with many negatives; the options that assume one class per image
refused in one line; the validation pass that gathers every image's probabilities for mAP and F1.

Label smoothing keeps its meaning for multi-hot targets: each target moves ``eps / 2`` towards the
other side (1 -> 1 - eps/2, 0 -> eps/2), as for two classes.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from vitclassifier.config import TrainConfig
from vitclassifier.errors import UserError
from vitclassifier.reporting.multilabel import DEFAULT_THRESHOLD, multi_label_scores, sigmoid
from vitclassifier.training.distributed import merge_dicts_across, sum_across
from vitclassifier.training.evaluate import EvalContext

ASL_GAMMA_NEG, ASL_GAMMA_POS, ASL_CLIP = 4.0, 0.0, 0.05  # the paper's defaults


def check_options(config: TrainConfig, multi_label: bool) -> None:
    """The options that only mean something for one of the tasks, refused in one line."""
    data, recipe = config.data, config.recipe
    if not multi_label:
        if recipe.loss == "asl":
            raise UserError("--loss asl is for several labels per image (--task multi-label): one class per "
                            "image trains with cross-entropy")
        if recipe.select_by == "map":
            raise UserError("--select-by map ranks several labels per image (--task multi-label); choose "
                            "accuracy, macro-f1 or loss")
        return
    given = [name for name, on in (("--mixup", recipe.mixup > 0), ("--cutmix", recipe.cutmix > 0),
                                   ("--balanced-sampler", data.balanced_sampler),
                                   ("--class-weights auto", recipe.class_weights == "auto"),
                                   ("--folds", recipe.folds > 0)) if on]
    if given:
        raise UserError(f"{', '.join(given)}: not available with several labels per image (they assume one "
                        f"class per image); for many negatives use --loss asl")


def select_by_of(config: TrainConfig, multi_label: bool) -> str:
    """--select-by auto: mAP for several labels per image, accuracy for one."""
    chosen = config.recipe.select_by
    return chosen if chosen != "auto" else "map" if multi_label else "accuracy"


def multi_label_loss(logits: torch.Tensor, targets: torch.Tensor, loss: str,
                     smoothing: float) -> torch.Tensor:
    """The mean over the batch of each image's loss summed over its classes (so the gradient per logit is
    of cross-entropy's size, and the learning rates carry over)."""
    targets = targets.float() * (1 - smoothing) + smoothing / 2
    if loss == "asl":
        probs = torch.sigmoid(logits)
        shifted = (probs - ASL_CLIP).clamp(min=0)  # probability shifting: easy negatives count nothing
        positive = targets * F.logsigmoid(logits) * (1 - probs) ** ASL_GAMMA_POS
        negative = (1 - targets) * torch.log1p(-shifted.clamp(max=1 - 1e-6)) * shifted ** ASL_GAMMA_NEG
        return -(positive + negative).sum(1).mean()
    return F.binary_cross_entropy_with_logits(logits, targets, reduction="none").sum(1).mean()


def exact_hits(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Images whose every label is right at 0.5 (the training bar's accuracy)."""
    return ((logits > 0) == (targets > 0.5)).all(1).sum()


@torch.inference_mode()
def evaluate_multi_label(ctx: EvalContext, net: torch.nn.Module, loader: DataLoader, num_classes: int,
                         desc: str, keep_outputs: bool = False, thresholds: np.ndarray | None = None) -> dict:
    """Loss, mAP, micro/macro F1 and exact match over the whole set (every process's probabilities
    gathered), at ``thresholds`` (default 0.5). ``keep_outputs``: also the logits, targets and paths."""
    net.eval()
    logits_seen, targets_seen, paths_seen = [], [], []
    for images, labels, paths, bad in ctx.bar(loader, desc):
        ctx.note_bad(bad)
        if images is None:
            continue
        with ctx.autocast():
            logits = net(pixel_values=images.to(ctx.device, non_blocking=True)).logits.float()
        logits_seen.append(logits.cpu())
        targets_seen.append(labels.cpu())
        paths_seen += paths
    logits = torch.cat(logits_seen) if logits_seen else torch.zeros(0, num_classes)
    targets = torch.cat(targets_seen) if targets_seen else torch.zeros(0, num_classes, dtype=torch.int64)
    loss = F.binary_cross_entropy_with_logits(logits, targets.float(), reduction="sum").item()
    loss, count = sum_across([loss, len(targets)], ctx.world, ctx.device)
    parts = merge_dicts_across({ctx.world.rank: (sigmoid(logits), targets.numpy())}, ctx.world)
    probs = np.concatenate([parts[rank][0] for rank in sorted(parts)])
    everything = np.concatenate([parts[rank][1] for rank in sorted(parts)])
    cut = np.full(num_classes, DEFAULT_THRESHOLD) if thresholds is None else thresholds
    scores = multi_label_scores(probs, everything, cut)
    stats = {**scores, "loss": loss / max(1.0, count), "count": int(count)}
    if keep_outputs and logits_seen:
        stats.update(logits=logits, labels=targets, paths=paths_seen)
    return stats


def check_classes_readable(bad_files: dict, samples: list, labels: list[str]) -> None:
    """Training cannot learn a class whose every training image is unreadable: say so. (Several labels
    per image: a label without a training image is no such class.)"""
    for index, name in enumerate(labels):
        paths = [str(path) for path, label in samples
                 if (label[index] if isinstance(label, tuple) else label == index)]
        if all(path in bad_files for path in paths) and (paths or not isinstance(samples[0][1], tuple)):
            raise UserError(f"every training image of class {name!r} is unreadable ({len(paths)} files, "
                            f"listed above); fix or remove them, or remove the class folder")
