"""The fine-tuning recipe: parameter groups with layer-wise LR decay, staged schedules, mixup and
cutmix, the loss, an EMA of the weights, class weights.

The ideas come from the strongest public recipes: fastai (train the head first, then everything,
one warm-up + cosine cycle per stage), BEiT/timm (layer-wise learning-rate decay, EMA) and DeiT
(label smoothing, mixup/cutmix)."""
from __future__ import annotations

import copy
import math

import torch
from torch import nn
from torchvision.transforms import v2

from vitclassifier.model.vit import encoder_blocks


def parameter_depths(model: nn.Module) -> dict[str, int]:
    """Depth of every parameter: 0 for the embeddings, i+1 for encoder block i, L+1 for the final
    norm and the head (L blocks). Models without a ViT-style encoder get depth 0 throughout."""
    blocks = encoder_blocks(model)
    if blocks is None:
        return {name: 0 for name, _ in model.named_parameters()}
    block_of = {id(p): i + 1 for i, block in enumerate(blocks) for p in block.parameters()}
    top = len(blocks) + 1
    return {
        name: block_of.get(id(p), 0 if "embeddings" in name else top) for name, p in model.named_parameters()
    }


def make_optimizer(
    model: nn.Module, lr: float, weight_decay: float, layer_decay: float = 1.0, head_lr: float | None = None
) -> torch.optim.AdamW:
    """AdamW over every parameter that --freeze leaves trainable.

    Block i of L gets ``lr * layer_decay ** (L + 1 - depth)``, so early blocks (generic features)
    move less than late ones; the new head gets ``head_lr``. Weight decay applies to weight
    matrices only: biases and norm weights (1-D) are exempt."""
    depths = parameter_depths(model)
    top = max(depths.values())
    head = {id(p) for p in model.classifier.parameters()}
    groups: dict[tuple, dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        group_lr = head_lr if id(param) in head and head_lr else lr * layer_decay ** (top - depths[name])
        decay = weight_decay if param.ndim > 1 else 0.0
        groups.setdefault((group_lr, decay), {"params": [], "lr": group_lr, "weight_decay": decay})[
            "params"
        ].append(param)
    # One fused kernel per step where PyTorch has it (CUDA, CPU, MPS), else one kernel per tensor list.
    fused = all(p.device.type in ("cuda", "cpu", "mps") for group in groups.values() for p in group["params"])
    return torch.optim.AdamW(
        list(groups.values()), lr=lr, fused=fused or None, foreach=None if fused else True
    )


def staged_warmup_cosine(stage_steps: list[int], warmup: float):
    """LR multiplier for consecutive stages (e.g. head only, then all): each stage warms up
    linearly over its first ``warmup`` fraction, then decays along a cosine to zero."""

    def factor(step: int) -> float:
        for stage, steps in enumerate(stage_steps):
            if step < steps or stage == len(stage_steps) - 1:
                warmup_steps = int(warmup * steps)
                if step < warmup_steps:
                    return (step + 1) / warmup_steps
                progress = (step - warmup_steps) / max(1, steps - warmup_steps)
                return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
            step -= steps
        return 0.0  # no stages at all

    return factor


def set_trainable(model: nn.Module, head_only: bool, trainable: set[int]) -> None:
    """Head-only stage of --freeze-epochs, or back to the parameters --freeze leaves trainable."""
    head = {id(p) for p in model.classifier.parameters()}
    for param in model.parameters():
        param.requires_grad = id(param) in (head if head_only else trainable)


def mix_batches(num_classes: int, mixup: float, cutmix: float):
    """A batch transform (images, labels) -> (images, soft targets) for --mixup / --cutmix, or None.
    With both, each batch uses one of them at random."""
    choices = ([v2.MixUp(alpha=mixup, num_classes=num_classes)] if mixup > 0 else []) + (
        [v2.CutMix(alpha=cutmix, num_classes=num_classes)] if cutmix > 0 else []
    )
    if not choices:
        return None
    return choices[0] if len(choices) == 1 else v2.RandomChoice(choices)


class EMA:
    """Exponential moving average of the weights (``--ema DECAY``), kept in a copy of the model.

    The decay ramps up as ``min(decay, (1 + n) / (10 + n))`` after n updates, so the average
    follows the early, fast-changing weights instead of being stuck near the initial ones."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay, self.updates = decay, 0
        self.model = copy.deepcopy(model).eval()
        for param in self.model.parameters():
            param.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        averaged = [v for v in self.model.state_dict().values() if v.dtype.is_floating_point]
        current = [v for v in model.state_dict().values() if v.dtype.is_floating_point]
        torch._foreach_lerp_(averaged, current, 1.0 - decay)

    def state_dict(self) -> dict:
        return {"updates": self.updates, "weights": self.model.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.updates = state["updates"]
        self.model.load_state_dict(state["weights"])


def class_weights(labels: list[int], num_classes: int) -> torch.Tensor:
    """Inverse-frequency loss weights, n / (k * count), so every class adds the same total weight."""
    counts = torch.bincount(torch.tensor(labels), minlength=num_classes).double()
    return (len(labels) / (num_classes * counts.clamp(min=1))).float()
