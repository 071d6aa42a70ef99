"""The shared evaluation preprocessing (data/transforms.py): eval_transform does what the image processor
saved with a checkpoint does, so transformers' pipeline preprocesses like we do."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from vitclassifier.data.transforms import Preprocessing, eval_transform


def test_eval_transform_matches_the_saved_image_processor(tmp_path):
    """transformers.pipeline preprocesses with the saved processor; it must equal our eval path."""
    from transformers import AutoImageProcessor
    prep = Preprocessing(48, 0.875, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3))
    prep.to_image_processor().save_pretrained(tmp_path)
    processor = AutoImageProcessor.from_pretrained(tmp_path)
    assert Preprocessing.from_image_processor(processor) == prep
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (70, 100, 3), dtype=np.uint8))
    ours = eval_transform(prep)(image)
    theirs = processor(image, return_tensors="pt")["pixel_values"][0]
    assert ours.shape == (3, 48, 48)
    assert torch.allclose(ours, theirs, atol=1e-5)

