"""One evaluation pass, and the small context every pass over a loader runs in.

``EvalContext`` is where a model runs (device, autocast dtype, processes) and the unreadable files
met so far; validation, the training batches, ``train.py --evaluate`` and the deep audit share it.
``evaluate`` sums counts and a confusion matrix, so its metrics are exact over the whole set, also
across processes.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from vitclassifier.devices import autocast
from vitclassifier.reporting.metrics import macro_f1
from vitclassifier.training.distributed import World, sum_across, sum_tensor_across


@dataclass
class EvalContext:
    """Where a pass over a loader runs, and the unreadable files it met (path -> why)."""
    device: torch.device
    dtype: torch.dtype | None  # autocast's, None: fp32
    world: World = field(default_factory=World)
    bad_files: dict = field(default_factory=dict)

    def autocast(self):
        return autocast(self.device, self.dtype)

    def note_bad(self, bad: list[tuple[str, str]]) -> None:
        """Warn once of each unreadable file, and remember it."""
        for path, reason in bad:
            if path not in self.bad_files:
                tqdm.write(f"warning: skipping {path}: {reason}", file=sys.stderr)
                self.bad_files[path] = reason

    def bar(self, loader: DataLoader, desc: str):
        """A progress bar on the main process's terminal only."""
        return tqdm(
            loader, desc=desc, leave=False, dynamic_ncols=True, disable=None if self.world.is_main else True
        )


def sum_dtype(device: torch.device) -> torch.dtype:
    """Running sums kept on the device (read once at the end, so the CPU never waits for the GPU
    mid-loop): float64 keeps counts exact; Apple's MPS has no float64."""
    return torch.float32 if device.type == "mps" else torch.float64


@torch.inference_mode()
def evaluate(
    ctx: EvalContext,
    net: torch.nn.Module,
    loader: DataLoader,
    num_classes: int,
    desc: str,
    keep_outputs: bool = False,
) -> dict:
    """Loss, top-1, top-3 and macro-F1 of ``net`` over the whole set (summed over processes), and
    the confusion matrix. ``keep_outputs`` also returns every logit row, label and path (one process)."""
    net.eval()
    sums = torch.zeros(3, dtype=sum_dtype(ctx.device), device=ctx.device)  # loss, top-1 and top-3 hits
    count = 0
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=ctx.device)
    outputs = {"logits": [], "labels": [], "paths": []}
    for images, labels, paths, bad in ctx.bar(loader, desc):
        ctx.note_bad(bad)
        if images is None:
            continue
        images, labels = images.to(ctx.device, non_blocking=True), labels.to(ctx.device, non_blocking=True)
        with ctx.autocast():
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
    loss, top1, top3, count = sum_across(sums.tolist() + [count], ctx.world, ctx.device)
    confusion = sum_tensor_across(confusion, ctx.world).cpu()
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
