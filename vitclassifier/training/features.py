"""Training the head on cached backbone features.

With ``--freeze backbone`` and every augmentation off, each epoch would push the same images
through the same frozen network to get the same features. So the backbone runs once over the
training and validation images, and the epochs train the classification head on what it
returned: the epochs then take milliseconds instead of a full forward pass each. The checkpoint
is the whole model as usual (the head is the model's own ``classifier``).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from vitclassifier.config import TrainConfig
from vitclassifier.data.dataset import ImageFolderDataset, collate_skipping_bad
from vitclassifier.devices import autocast


def can_cache_features(config: TrainConfig) -> bool:
    """True when every epoch would see the same backbone features: frozen backbone (its dropout
    off), no augmentation and no mixing. ``--cache-mb 0`` turns this cache off too."""
    data, model, recipe = config.data, config.model, config.recipe
    return (model.freeze == "backbone" and not any(data.augment.values()) and not recipe.mixup
            and not recipe.cutmix and not model.backbone_dropout and data.cache_mb > 0)


class FeatureDataset(Dataset):
    """Like ImageFolderDataset, but sample i is its cached feature vector (or why it was unreadable)."""

    def __init__(self, samples: list, features: dict[str, torch.Tensor | str]):
        self.samples, self.features = samples, features

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
    hook = model.classifier.register_forward_pre_hook(
        lambda head, inputs: captured.append(inputs[0].float().cpu())
    )
    features: dict[str, torch.Tensor | str] = {}
    was_training = model.training
    model.eval()
    try:
        for pixels, _, paths, bad in DataLoader(
            images, batch_size=batch_size, collate_fn=collate_skipping_bad
        ):
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
