"""Label-destroying augmentations (training/label_checks.py): a flip that turns one class into another
(arrows pointing left or right) is switched off; a flip the classes don't care about (arrows
pointing up or down) is kept."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from vitclassifier.training.label_checks import Flipped, check_augmentation, sign_test
from vitclassifier.training.probe import fit_probe

SIZE = 20


def arrow(direction: str, rng: random.Random) -> Image.Image:
    """An arrow (shaft and head) pointing ``direction``, at a random place, length and grey level."""
    image = Image.new("L", (SIZE, SIZE), rng.randint(0, 60))
    draw, ink = ImageDraw.Draw(image), rng.randint(160, 255)
    cx, cy, half = SIZE / 2 + rng.uniform(-2, 2), SIZE / 2 + rng.uniform(-2, 2), rng.uniform(5, 8)
    draw.line([(cx - half, cy), (cx + half, cy)], fill=ink, width=2)
    draw.polygon([(cx + half + 1, cy), (cx + half - 4, cy - 4), (cx + half - 4, cy + 4)], fill=ink)
    turn = {"right": None, "left": Image.FLIP_LEFT_RIGHT, "up": Image.ROTATE_90, "down": Image.ROTATE_270}
    return image.transpose(turn[direction]) if turn[direction] is not None else image


def pixels(draw, classes: list[str], per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    rng = random.Random(seed)
    images = [np.asarray(draw(name, rng), np.float32) / 255 for name in classes for _ in range(per_class)]
    return torch.tensor(np.stack(images))[:, None], torch.arange(len(classes)).repeat_interleave(per_class)


def flip_verdict(draw, classes: list[str]):
    """A linear probe on the raw pixels, fitted on training images, judges the flip on validation ones."""
    (train, train_labels), (val, val_labels) = pixels(draw, classes, 80, 0), pixels(draw, classes, 60, 1)
    probe = fit_probe(train.flatten(1), train_labels, len(classes))
    flipped = torch.stack([Flipped(ImagesOnly(val))[i][0] for i in range(len(val))])
    return check_augmentation("flip", probe.logits(val.flatten(1)), probe.logits(flipped.flatten(1)),
                              val_labels)


class ImagesOnly(torch.utils.data.Dataset):
    """Pixel tensors as (pixels, label, path, reason) samples, as ImageFolderDataset gives them."""

    def __init__(self, images: torch.Tensor):
        self.images, self.samples = images, list(range(len(images)))

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        return self.images[index], 0, str(index), None


def test_a_flip_that_turns_left_into_right_is_switched_off() -> None:
    verdict = flip_verdict(arrow, ["left", "right"])
    assert verdict.accuracy >= 0.9 and verdict.switch_off
    assert verdict.reason.startswith("flip switched off") and f"{verdict.accuracy:.0%}" in verdict.reason


def test_a_flip_the_classes_dont_care_about_is_kept() -> None:
    verdict = flip_verdict(arrow, ["up", "down"])
    assert verdict.accuracy >= 0.9  # the same model class, as sure of its classes as on left/right
    assert not verdict.switch_off and verdict.reason.startswith("flip kept")
    assert abs(verdict.accuracy - verdict.transformed_accuracy) < 0.1


def test_a_small_drop_on_few_images_is_not_enough() -> None:
    labels = torch.zeros(6, dtype=torch.long)
    right, wrong = torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 2.0]])
    half_wrong = torch.cat([wrong.repeat(3, 1), right.repeat(3, 1)])
    verdict = check_augmentation("flip", right.repeat(6, 1), half_wrong, labels)
    assert verdict.transformed_accuracy == 0.5 and not verdict.switch_off  # 3 of 6: p = 0.125
    assert "too few images" in verdict.reason
    assert sign_test(3, 0) == pytest.approx(0.125) and sign_test(0, 0) == 1.0
