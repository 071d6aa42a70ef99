"""The decode cache (data/dataset.py): cached samples equal freshly decoded ones, and the cache stays
within its budget."""
from __future__ import annotations

import pytest
import torch
from PIL import Image

from vitclassifier.data.augment import train_decode
from vitclassifier.data.dataset import ImageFolderDataset, fill_caches
from vitclassifier.data.transforms import Preprocessing, eval_transform


@pytest.fixture()
def photos(tmp_path):
    """Four JPEGs of different shapes and one broken file."""
    paths = []
    for i, size in enumerate([(120, 90), (64, 64), (90, 160), (200, 100)]):
        path = tmp_path / f"photo{i}.jpg"
        Image.radial_gradient("L").resize(size).convert("RGB").save(path)
        paths.append(path)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    return [(path, 0) for path in paths + [broken]]


@pytest.mark.parametrize("make_transform", [train_decode, eval_transform])  # what training, validation cache
def test_cached_samples_equal_freshly_decoded_ones(photos, make_transform):
    prep = Preprocessing(image_size=32, crop_pct=0.875)
    fresh = ImageFolderDataset(photos, make_transform(prep), prep.resize_size)
    cached = ImageFolderDataset(photos, make_transform(prep), prep.resize_size)
    count, used = cached.fill_cache(max_bytes=2**30, num_threads=2)
    assert count == len(photos) and used > 0
    assert isinstance(cached.cache[len(photos) - 1], str)  # the broken file's reason is cached too
    for dataset in (fresh, cached):
        dataset.epoch_seed = 7
    for index in range(len(photos)):
        a, b = fresh[index], cached[index]
        if a[0] is None:
            assert b[0] is None and b[3] == a[3] and "broken.jpg" in b[2]
        else:
            assert torch.equal(a[0], b[0]) and a[1:] == b[1:]


def test_cache_stays_within_its_budget(photos):
    prep = Preprocessing(image_size=32)
    dataset = ImageFolderDataset(photos, eval_transform(prep), prep.resize_size)
    one_image = 3 * 32 * 32
    count, used = dataset.fill_cache(max_bytes=2 * one_image)
    assert count == 2 and used == 2 * one_image
    assert dataset[3][0].shape == (3, 32, 32)  # not cached: decoded on access as before
    message = fill_caches([ImageFolderDataset(photos, eval_transform(prep), prep.resize_size)], one_image)
    assert message.startswith("Decoded 1 images") and "4 more are decoded every epoch" in message

