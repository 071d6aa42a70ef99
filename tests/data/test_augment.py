"""Batched augmentation on the training device: same semantics as the per-image torchvision steps it
replaced, exact when switched off, and a pure function of the seed."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from PIL import Image

from vitclassifier.data.augment import (
    CROP_RATIO,
    CROP_SCALE,
    BatchAugment,
    crop_boxes,
    draw_uniforms,
    jitter,
    jitter_choices,
    sampling_grid,
    train_decode,
)
from vitclassifier.data.transforms import Preprocessing, eval_transform

PREP = Preprocessing(image_size=32, crop_pct=0.8)  # decoded squares of 40 px, model input 32 px


def photo(width: int = 60, height: int = 45, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def decoded_batch(count: int = 6, crop: bool = True, rotate: bool = True) -> torch.Tensor:
    decode = train_decode(PREP, crop=crop, rotate=rotate)
    return torch.stack([decode(photo(seed=i)) for i in range(count)])


def test_every_augmentation_off_is_exactly_eval_transform():
    off = dict(crop=False, flip=False, rotate=False, color_jitter=False)
    images = [photo(seed=i) for i in range(4)]
    batch = torch.stack([train_decode(PREP, crop=False, rotate=False)(image) for image in images])
    augmented = BatchAugment(PREP, **off)(batch)
    expected = torch.stack([eval_transform(PREP)(image) for image in images])
    assert torch.equal(augmented, expected)


def test_loaders_decode_same_size_uint8_squares_so_batches_stack():
    batch = decoded_batch()
    assert batch.dtype == torch.uint8 and batch.shape == (6, 3, PREP.resize_size, PREP.resize_size)
    assert decoded_batch(crop=False, rotate=False).shape[-1] == PREP.image_size


def test_output_is_normalised_float_at_the_model_size_and_a_function_of_the_seed():
    batch, augment = decoded_batch(), BatchAugment(PREP)
    torch.manual_seed(5)
    first = augment(batch)
    torch.manual_seed(5)
    again = augment(batch)
    torch.manual_seed(6)
    other = augment(batch)
    assert first.shape == (6, 3, 32, 32) and first.dtype == torch.float32
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_flip_alone_mirrors_about_half_the_images_exactly():
    batch = decoded_batch(64, crop=False, rotate=False)
    augment = BatchAugment(PREP, crop=False, flip=True, rotate=False, color_jitter=False)
    plain = BatchAugment(PREP, crop=False, flip=False, rotate=False, color_jitter=False)(batch)
    torch.manual_seed(0)
    out = augment(batch)
    mirrored = torch.tensor([torch.equal(o, p.flip(-1)) for o, p in zip(out, plain)])
    unchanged = torch.tensor([torch.equal(o, p) for o, p in zip(out, plain)])
    assert bool((mirrored | unchanged).all())
    assert 16 <= int(mirrored.sum()) <= 48


def test_sampling_grid_is_affine_grid():
    theta = torch.randn(5, 2, 3)
    expected = F.affine_grid(theta, [5, 3, 24, 24], align_corners=False)
    assert torch.allclose(sampling_grid(theta, 24), expected, atol=1e-6)


def test_crop_boxes_keep_torchvisions_area_and_ratio_and_stay_inside():
    width, height, x, y = crop_boxes(draw_uniforms(4000)[:, 1:5]).unbind(1)
    area, ratio = width * height, width / height
    assert float(area.max()) <= CROP_SCALE[1] + 1e-6 and float(area.min()) >= 0.3  # shrunk to fit only
    assert float((area >= CROP_SCALE[0] - 1e-6).float().mean()) > 0.8
    assert CROP_RATIO[0] - 1e-5 <= float(ratio.min()) and float(ratio.max()) <= CROP_RATIO[1] + 1e-5
    assert float((x - width / 2).min()) >= -1e-6 and float((x + width / 2).max()) <= 1 + 1e-6
    assert float((y - height / 2).min()) >= -1e-6 and float((y + height / 2).max()) <= 1 + 1e-6


def test_rotation_alone_turns_about_the_centre():
    """A small square around the centre stays put under any rotation; a corner patch moves."""
    side = PREP.resize_size
    image = torch.zeros(1, 3, side, side, dtype=torch.uint8)
    image[..., side // 2 - 2:side // 2 + 2, side // 2 - 2:side // 2 + 2] = 255
    augment = BatchAugment(PREP, crop=False, flip=False, rotate=True, color_jitter=False)
    plain = BatchAugment(PREP, crop=False, flip=False, rotate=False, color_jitter=False)
    torch.manual_seed(1)
    rotated = augment(image)
    centred = plain(image[..., 4:-4, 4:-4])  # the centre crop of image_size, unrotated
    centre = slice(PREP.image_size // 2 - 1, PREP.image_size // 2 + 1)
    assert torch.allclose(rotated[..., centre, centre], centred[..., centre, centre], atol=0.05)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_colour_jitter_is_torchvisions_brightness_contrast_and_saturation(seed):
    """On colours well inside [0, 1] (where torchvision's clamps after each step do nothing) the one
    composed map equals torchvision's three steps, in the order drawn for each image."""
    pixels = torch.rand(4, 3, 16, 16) * 0.4 + 0.3
    torch.manual_seed(seed)
    factors, first = jitter_choices(torch.rand(4, 4))
    out = jitter(pixels, factors, first)
    steps = [TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation]
    for i in range(4):
        expected = pixels[i]
        for position in range(3):
            operation = int((first[i] + position) % 3)
            expected = steps[operation](expected, float(factors[i, operation]))
        assert torch.allclose(out[i], expected, atol=1e-5)


def test_jitter_choices_cover_the_range_and_every_order():
    factors, first = jitter_choices(torch.rand(4000, 4))
    assert 0.7 <= float(factors.min()) < 0.71 and 1.29 < float(factors.max()) <= 1.3
    assert sorted(first.unique().tolist()) == [0, 1, 2]


def test_an_images_augmentation_depends_on_its_seed_not_on_its_batch():
    """Split a batch in two (as gradient accumulation or a second process does): with per-image
    seeds, every image is augmented exactly as in the whole batch."""
    batch, augment, seeds = decoded_batch(6), BatchAugment(PREP), [11, 12, 13, 14, 15, 16]
    whole = augment(batch, seeds)
    halves = torch.cat([augment(batch[:2], seeds[:2]), augment(batch[2:], seeds[2:])])
    assert torch.allclose(whole, halves, atol=1e-5)
    assert not torch.allclose(whole, augment(batch, [s + 100 for s in seeds]), atol=1e-3)


def test_each_draw_of_an_image_gets_a_view_of_its_own_and_a_resume_counts_as_before():
    """--balanced-sampler draws with replacement: the second draw of an image in an epoch is seeded
    apart from the first; a resumed epoch counts the draws of the batches it skips."""
    from vitclassifier.config import RecipeOptions
    from vitclassifier.training.distributed import EpochSampler, World, augmentation_seeds, image_seed
    recipe = RecipeOptions()
    seeds = augmentation_seeds(recipe, 3, ["a", "b", "a"], {"a": 0, "b": 1}, Counter())
    assert seeds[0] == image_seed(recipe, 3, 0) and seeds[1] == image_seed(recipe, 3, 1)
    assert len(set(seeds)) == 3
    sampler = EpochSampler(40, 4, seed=1, world=World(), weights=torch.ones(40))
    sampler.set_epoch(2)
    whole = list(sampler)
    sampler.set_epoch(2, start_batch=3)
    assert sampler.already_drawn() + list(sampler) == whole
