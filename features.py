"""Training the head on cached backbone features.

With ``--freeze backbone`` and every augmentation off, each epoch would push the same images
through the same frozen network to get the same features. So the backbone runs once over the
training and validation images, and the epochs train the classification head on what it
returned: the epochs then take milliseconds instead of a full forward pass each. The checkpoint
is the whole model as usual (the head is the model's own ``classifier``).
"""
from __future__ import annotations

import argparse
from types import SimpleNamespace

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from classifier import ImageFolderDataset, collate_skipping_bad
from devices import autocast


def can_cache_features(args: argparse.Namespace) -> bool:
    """True when every epoch would see the same backbone features: frozen backbone (its dropout
    off), no augmentation and no mixing. ``--cache-mb 0`` turns this cache off too."""
    no_augmentation = args.no_crop and args.no_flip and args.no_rotate and args.no_color_jitter
    return (args.freeze == "backbone" and no_augmentation and not args.mixup and not args.cutmix
            and not args.backbone_dropout and args.cache_mb > 0)


class HeadOnly(nn.Module):
    """Calls ``model.classifier`` on features, answering like the full model (``.logits``)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(logits=self.model.classifier(pixel_values))


class FeatureDataset(Dataset):
    """Like ImageFolderDataset, but sample i is its cached feature vector (or why it was unreadable)."""

    def __init__(self, samples: list, features: dict[str, torch.Tensor | str]):
        self.samples, self.features = samples, features
        self.epoch_seed = None  # nothing random left to seed

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, label = self.samples[index]
        feature = self.features[str(path)]
        if isinstance(feature, str):
            return None, label, str(path), feature
        return feature, label, str(path), None


@torch.inference_mode()
def extract_features(model: nn.Module, images: ImageFolderDataset, batch_size: int, device: torch.device,
                     dtype: torch.dtype | None) -> FeatureDataset:
    """Run the model once over ``images`` and keep what its classifier receives, per file."""
    captured = []
    hook = model.classifier.register_forward_pre_hook(lambda head, inputs: captured.append(inputs[0].float().cpu()))
    features: dict[str, torch.Tensor | str] = {}
    was_training = model.training
    model.eval()
    try:
        for pixels, _, paths, bad in DataLoader(images, batch_size=batch_size, collate_fn=collate_skipping_bad):
            features.update(bad)  # unreadable files keep their reason
            if pixels is None:
                continue
            with autocast(device, dtype):
                model(pixel_values=pixels.to(device, non_blocking=True))
            features.update(zip(paths, captured.pop()))
    finally:
        hook.remove()
        model.train(was_training)
    return FeatureDataset(images.samples, features)
