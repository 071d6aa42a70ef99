"""The linear probe (training/probe.py): near-perfect on separable features, and its head, copied into
a model's classifier, gives the probe's predictions from the backbone's own features."""
from __future__ import annotations

import torch
from helpers import CLASSES, make_pattern_folder

from vitclassifier.data.dataset import ImageFolderDataset
from vitclassifier.data.transforms import Preprocessing, eval_transform
from vitclassifier.training.features import extract_features
from vitclassifier.training.probe import feature_tensors, fit_probe


def separable(seed: int, per_class: int = 200, dim: int = 64, classes: int = 5):
    """Classes around far-apart centres, with an offset and uneven feature scales (as real features)."""
    centres = 6 * torch.randn(classes, dim, generator=torch.Generator().manual_seed(0))
    draw = torch.Generator().manual_seed(seed + 1)
    labels = torch.arange(classes).repeat_interleave(per_class)
    scales = torch.logspace(-2, 1, dim)
    return (centres[labels] + torch.randn(len(labels), dim, generator=draw)) * scales + 3.0, labels


def test_separable_features_are_fitted_almost_perfectly() -> None:
    (train_x, train_y), (val_x, val_y) = separable(0), separable(1)
    probe = fit_probe(train_x, train_y, 5, val_x, val_y)
    assert probe.train_accuracy >= 0.99 and probe.val_accuracy >= 0.98
    assert probe.weight.shape == (5, 64) and probe.bias.shape == (5,)


def test_noise_features_get_the_strongest_penalty_and_chance_accuracy() -> None:
    draw = torch.Generator().manual_seed(0)
    features, val_features = torch.randn(2, 300, 64, generator=draw)
    labels, val_labels = torch.randint(0, 3, (2, 300), generator=draw)
    probe = fit_probe(features, labels, 3, val_features, val_labels)
    assert probe.l2 >= 0.1  # held-out loss prefers a small head when the features say nothing
    assert probe.val_accuracy < 0.5


def test_the_head_plugged_into_a_vit_predicts_what_the_probe_predicts(tmp_path) -> None:
    from transformers import ViTConfig, ViTForImageClassification
    torch.manual_seed(0)
    model = ViTForImageClassification(ViTConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32,
        patch_size=8, num_labels=len(CLASSES)))
    folder = make_pattern_folder(tmp_path / "data", per_class=12, size=32)
    samples = [(path, CLASSES.index(path.parent.name)) for path in sorted(folder.rglob("*.png"))]
    prep = Preprocessing(image_size=32, crop_pct=1.0, mean=(0.5,) * 3, std=(0.5,) * 3)
    images = ImageFolderDataset(samples, eval_transform(prep), prep.resize_size)
    features, labels = feature_tensors(extract_features(model, images, 16, torch.device("cpu"), None))
    assert features.shape == (len(samples), 32)
    probe = fit_probe(features, labels, len(CLASSES))
    probe.load_into(model)
    model.eval()
    with torch.no_grad():
        pixels = torch.stack([images[i][0] for i in range(len(images))])
        logits = model(pixel_values=pixels).logits
    assert torch.allclose(logits, probe.logits(features), atol=1e-4)
    assert (logits.argmax(1) == labels).float().mean().item() == probe.train_accuracy
