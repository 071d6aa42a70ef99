"""The learning-rate range test (Smith 2017; fastai's ``lr_find``, Lightning's LR finder).

A few dozen training steps on training batches, each at a larger learning rate than the last
(exponentially, e.g. 1e-7 to 10), record the smoothed loss; the sweep stops once the loss blows up
(4x its minimum, or not finite). The model, the optimizer and the random number generators are put
back exactly as they were afterwards: the sweep leaves no trace in the run.

The step itself is the caller's (``train_step``): the Trainer passes its own forward and backward
(autocast, augmentation, gradient clipping), so the sweep measures the loss of the real training
step. Every parameter group keeps its ratio to the base LR (layer decay, a 10x head): the sweep
scales all groups by one factor, and the curve is drawn against the base (peak) LR.

The suggestion is the LR at the smoothed loss's minimum divided by 10 (Smith 2017, fastai 1): the
minimum is where steps begin to overshoot, and a tenth of it still trains fast. On eight small
problems (softmax and one-hidden-layer nets, SGD and Adam, two noise levels), measured against a
grid of short full trainings, it landed within a decade of the best LR in 7 of 8; fastai 2's
"valley" (the middle of the longest falling stretch) in 5, and the steepest descent (Lightning) in
6: on a sweep of a few dozen steps the curve's flat, noisy start lengthens the valley and makes
false steep points. The smoothing is lighter than fastai's 0.98 (whose lag is ~50 steps: longer
than the sweep), and the first tenth of the sweep (smoothing warm-up) never holds the minimum.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

SMOOTHING = 0.8  # the loss's exponential moving average: a lag of ~5 steps (fastai's 0.98: ~50)
DIVERGED = 4.0  # stop when the smoothed loss exceeds this multiple of its minimum


@dataclass
class LRCurve:
    """What the sweep measured and what it suggests (learning rates are base/peak LRs)."""
    lrs: list[float]
    losses: list[float]  # smoothed, bias-corrected
    suggestion: float  # the suggested peak LR
    head_lr: float  # the head's LR at the suggestion (same ratio to the base LR as configured)
    stopped: str  # why the sweep ended, one sentence

    def as_dict(self) -> dict:
        return {"lrs": self.lrs, "losses": self.losses, "suggestion": self.suggestion,
                "head_lr": self.head_lr, "stopped": self.stopped}


def plain_step(model: nn.Module, optimizer: torch.optim.Optimizer,
               loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Callable[[tuple], float]:
    """A training step for (inputs, targets) batches without any extras: for tests and the probe."""

    def step(batch: tuple) -> float:
        inputs, targets = batch
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(inputs), targets)
        loss.backward()
        optimizer.step()
        return loss.item()

    return step


def endless(batches: Iterable) -> Iterator:
    """The batches over and over: a small training split has fewer batches than the sweep has steps."""
    while True:
        empty = True
        for batch in batches:
            empty = False
            yield batch
        if empty:
            raise ValueError("the LR range test got no training batches")


def suggest(lrs: list[float], losses: list[float]) -> float:
    """A tenth of the LR at the lowest smoothed loss, outside the sweep's first tenth."""
    first = len(losses) // 10
    lowest = min(range(first, len(losses)), key=losses.__getitem__)
    return lrs[lowest] / 10


def snapshot(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Everything the sweep changes: weights (copied to the CPU), optimizer state and LRs, RNG states."""
    return {"model": {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()},
            "optimizer": copy.deepcopy(optimizer.state_dict()), "training": model.training,
            "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None}


def restore(model: nn.Module, optimizer: torch.optim.Optimizer, saved: dict) -> None:
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    model.train(saved["training"])
    torch.set_rng_state(saved["rng"])
    if saved["cuda_rng"] is not None:
        torch.cuda.set_rng_state_all(saved["cuda_rng"])


def lr_range_test(model: nn.Module, optimizer: torch.optim.Optimizer, train_step: Callable[[object], float],
                  batches: Iterable, base_lr: float, head_lr: float | None = None, start: float = 1e-7,
                  end: float = 10.0, steps: int = 60) -> LRCurve:
    """Sweep the base LR from ``start`` to ``end`` over ``steps`` calls of ``train_step(batch)``
    (which runs forward, backward and ``optimizer.step()``, and returns the loss), then restore
    ``model`` and ``optimizer``. ``base_lr`` is the LR the optimizer's groups were built for (each
    group keeps its ratio to it); ``head_lr`` (default ``base_lr``) gives the head's ratio."""
    ratios = [group["lr"] / base_lr for group in optimizer.param_groups]
    saved = snapshot(model, optimizer)
    lrs, losses, average, best = [], [], 0.0, math.inf
    stopped = f"reached the end of the sweep ({end:g})"
    model.train()
    try:
        for step, batch in zip(range(steps), endless(batches)):
            lr = start * (end / start) ** (step / max(1, steps - 1))
            for group, ratio in zip(optimizer.param_groups, ratios):
                group["lr"] = lr * ratio
            loss = float(train_step(batch))
            if not math.isfinite(loss):
                stopped = f"the loss was not finite at LR {lr:.2g}"
                break
            average = SMOOTHING * average + (1 - SMOOTHING) * loss
            smoothed = average / (1 - SMOOTHING ** (step + 1))
            lrs.append(lr)
            losses.append(smoothed)
            best = min(best, smoothed)
            if step > 0 and smoothed > DIVERGED * best:
                stopped = f"the loss rose above {DIVERGED:g}x its minimum at LR {lr:.2g}"
                break
    finally:
        restore(model, optimizer, saved)
    if len(losses) < 2:
        raise ValueError(f"the LR range test measured too few steps: {stopped}")
    suggestion = suggest(lrs, losses)
    return LRCurve(lrs, losses, suggestion, suggestion * (head_lr or base_lr) / base_lr, stopped)
