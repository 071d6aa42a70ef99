"""The fine-tuning recipe: optimizer parameter groups, learning-rate schedule, loss weights."""
from __future__ import annotations

import math

import torch


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


def class_weights(labels: list[int], num_classes: int) -> torch.Tensor:
    """Inverse-frequency loss weights, n / (k * count), so every class adds the same total weight."""
    counts = torch.bincount(torch.tensor(labels), minlength=num_classes).double()
    return (len(labels) / (num_classes * counts.clamp(min=1))).float()
