"""Augmentations that destroy the label, found on the user's own validation images.

A mirrored "b" is a "d", a mirrored arrow points the other way, mirrored text is no longer text:
there, a random horizontal flip teaches the model wrong labels. The check asks a fitted model (the
linear probe, on features of the validation images as they are and flipped) whether flipping
costs accuracy. Flip-symmetric classes lose nothing, while mirror-image classes lose most of it.

The rule is paired, per image: an image the model gets right as it is but wrong flipped counts
against the flip, the reverse for it. The flip is switched off only when both hold:
  - the loss is real: an exact one-sided sign test (McNemar's, on the images whose outcome
    changed) gives p <= ALPHA, so a few unlucky images on a small validation set don't count;
  - the loss is large: at least MIN_DROP of the validation images, so a backbone that is slightly
    orientation-sensitive (the probe never saw flipped images) keeps its useful augmentation.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.nn.functional import cross_entropy
from torch.utils.data import Dataset

ALPHA = 0.01  # the sign test's significance level
MIN_DROP = 0.10  # the smallest loss of validation accuracy (absolute) that switches an augmentation off


@dataclass
class LabelCheck:
    """The verdict on one augmentation, with the numbers behind it."""
    augmentation: str
    switch_off: bool
    reason: str
    accuracy: float  # on the images as they are
    transformed_accuracy: float
    p_value: float

    def as_dict(self) -> dict:
        return dict(vars(self))


class Flipped(Dataset):
    """A dataset's images mirrored left to right (pixels are (C, H, W) tensors), with its samples,
    so ``features.extract_features`` embeds the flipped validation images like the originals."""

    def __init__(self, images: Dataset):
        self.images, self.samples = images, images.samples

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        pixels, *rest = self.images[index]
        return (pixels.flip(-1) if pixels is not None else None, *rest)


def sign_test(worse: int, better: int) -> float:
    """One-sided exact binomial p-value of seeing ``worse`` or more of ``worse + better`` coin flips."""
    n = worse + better
    return sum(math.comb(n, k) for k in range(worse, n + 1)) / 2 ** n if n else 1.0


def check_augmentation(name: str, logits: torch.Tensor, transformed_logits: torch.Tensor,
                       labels: torch.Tensor) -> LabelCheck:
    """Does ``name`` destroy the label? ``logits`` and ``transformed_logits`` are a fitted model's
    outputs on the same validation images as they are and transformed, row for row."""
    right, right_transformed = logits.argmax(1) == labels, transformed_logits.argmax(1) == labels
    worse, better = int((right & ~right_transformed).sum()), int((~right & right_transformed).sum())
    accuracy, transformed = right.float().mean().item(), right_transformed.float().mean().item()
    loss = cross_entropy(logits, labels).item()
    transformed_loss = cross_entropy(transformed_logits, labels).item()
    p_value = sign_test(worse, better)
    drop = accuracy - transformed
    switch_off = p_value <= ALPHA and drop >= MIN_DROP
    figures = (f"validation accuracy {accuracy:.0%} as the images are, {transformed:.0%} with {name} "
               f"(loss {loss:.2f} -> {transformed_loss:.2f}; of {len(labels)} images {worse} were wrong "
               f"only with it, {better} right only with it, sign test p = {p_value:.2g})")
    if switch_off:
        reason = f"{name} switched off: {figures}: it changes what the images show"
    elif drop >= MIN_DROP:
        reason = f"{name} kept: {figures}: too few images to be sure it changes the class"
    else:
        reason = f"{name} kept: {figures}: it costs less than {MIN_DROP:.0%} of accuracy"
    return LabelCheck(name, switch_off, reason, accuracy, transformed, p_value)
