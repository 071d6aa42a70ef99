"""Preprocessing: one definition of evaluation preprocessing, read from and written to the
checkpoint, and the training augmentation built on the same steps."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image
from torchvision.transforms import v2

from vitclassifier.data.images import PIXEL_BUDGET_VARIABLE, ImageTooLarge, pixel_budget


@dataclass
class Preprocessing:
    """What a model expects of its input; saved as the checkpoint's preprocessor_config.json."""
    image_size: int = 224
    crop_pct: float = 0.875
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    @property
    def resize_size(self) -> int:
        return int(self.image_size / self.crop_pct)

    @classmethod
    def from_image_processor(cls, processor, image_size: int | None = None) -> Preprocessing:
        """Read size, crop ratio, mean and std from any Hugging Face image processor."""
        size = processor.size or {}
        crop = getattr(processor, "crop_size", None) or {}
        native = crop.get("height") or size.get("shortest_edge") or size.get("height") or 224
        if getattr(processor, "crop_pct", None):
            crop_pct = processor.crop_pct
        elif crop.get("height") and getattr(processor, "do_center_crop", False):
            crop_pct = crop["height"] / (size.get("shortest_edge") or size.get("height"))
        else:
            crop_pct = 1.0  # processors like ViT's resize straight to the model's size
        return cls(image_size or native, min(1.0, crop_pct),
                   tuple(processor.image_mean), tuple(processor.image_std))

    def to_image_processor(self):
        """An image processor doing exactly eval_transform, so transformers.pipeline agrees with us."""
        from transformers import ConvNextImageProcessor
        return ConvNextImageProcessor(size={"shortest_edge": self.image_size}, crop_pct=self.crop_pct,
                                      image_mean=list(self.mean), image_std=list(self.std), resample=3)


@dataclass
class TwoStage:
    """A transform in two steps: ``decode`` (deterministic: PIL image -> resized uint8 tensor, the
    part worth caching) and ``finish`` (random augmentation on uint8, then float and normalise)."""
    decode: v2.Compose
    finish: v2.Compose

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self.finish(self.decode(image))


class BoundedResize:
    """Resize the short side to ``size`` (bicubic, antialiased), but first refuse (ImageTooLarge, an
    unreadable image to every caller) a picture whose resized copy would hold more than
    ``pixel_budget()`` pixels: a 100000x1 strip passes the decoding budget, yet resized to a short
    side of 256 it would be 25600000x256. The one resize of all preprocessing (training, validation,
    prediction, --explain, the web page), so the bound holds after resizing as before it."""

    def __init__(self, size: int):
        self.size = size
        self.resize = v2.Resize(size, interpolation=v2.InterpolationMode.BICUBIC, antialias=True)

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        height, width = pixels.shape[-2:]
        short, long = sorted((int(width), int(height)))
        resized = int(self.size * long / max(short, 1))  # torchvision's own arithmetic
        budget = pixel_budget()
        if resized * self.size > budget:
            shape = (resized, self.size) if width >= height else (self.size, resized)
            raise ImageTooLarge(
                f"{width}x{height} resized to a short side of {self.size} would be {shape[0]}x{shape[1]}, "
                f"{resized * self.size / 1e6:.1f} megapixels, over the budget of {budget / 1e6:g} "
                f"megapixels: crop the file to a less elongated shape, or raise the budget with "
                f"{PIXEL_BUDGET_VARIABLE}=<pixels>")
        return self.resize(pixels)


def decode_steps(prep: Preprocessing) -> list:
    """PIL image -> uint8 tensor whose short side is ``prep.resize_size`` (bicubic, antialiased),
    within the pixel budget (BoundedResize)."""
    return [v2.PILToTensor(), BoundedResize(prep.resize_size)]


def normalise_steps(prep: Preprocessing) -> list:
    """uint8 -> float in [0, 1] -> normalised by the model's mean and std (one image or a batch)."""
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(prep.mean, prep.std)]


def eval_transform(prep: Preprocessing) -> TwoStage:
    """THE evaluation preprocessing: validation and predict.py both use exactly this."""
    return TwoStage(v2.Compose([*decode_steps(prep), v2.CenterCrop(prep.image_size)]),
                    v2.Compose(normalise_steps(prep)))
