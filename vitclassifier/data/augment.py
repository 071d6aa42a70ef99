"""Training augmentation on whole batches, with random parameters per image, on the training device.

The data loaders only decode and resize (``train_decode``): every image arrives as the same-size
uint8 square, so batches stack and cross to the GPU as bytes. ``BatchAugment`` then does, per batch:

  1. rotation (±15°), random resized crop (area 0.6-1, aspect 3/4-4/3) and horizontal flip as ONE
     affine resampling (``grid_sample``), straight to the model's input size;
  2. colour jitter (brightness, contrast, saturation 0.3 each, in a random order per image),
     with torchvision's definitions: blends with black, with the image's mean grey, with its greyscale;
  3. conversion to float and normalisation, exactly as ``eval_transform`` does.

kornia.augmentation draws per-sample parameters too, but resamples once per geometric step and
computes saturation in HSV, unlike torchvision's blend; these three steps are the few lines
neither library has in this form. With rotation and crop off, nothing is resampled: the loaders
crop the centre as evaluation does, so with every augmentation off the input equals
``eval_transform`` exactly.

The parameters are drawn on the CPU, per image, from a generator seeded by (seed, epoch, image):
the same on every device, in every batch layout (accumulation, processes) and on every resume.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from vitclassifier.data.transforms import Preprocessing, TwoStage, decode_steps, normalise_steps

PARAMETERS = 10  # uniforms per image: flip, crop (4), angle, jitter (4)
# splitmix64's constants as signed int64 (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB)
SPLITMIX = tuple(c - 2**64 for c in (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB))
ROTATION_DEGREES = 15.0
CROP_SCALE = (0.6, 1.0)  # share of the image's area a random crop keeps
CROP_RATIO = (3 / 4, 4 / 3)  # its aspect ratio, drawn log-uniformly (as torchvision)
JITTER = 0.3  # brightness, contrast and saturation factors are drawn from [1 - JITTER, 1 + JITTER]
GREY_WEIGHTS = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale


def train_decode(prep: Preprocessing, crop: bool = True, rotate: bool = True) -> TwoStage:
    """What the loaders do for training: decode, resize the short side to ``resize_size``, and centre-
    crop a square, the whole ``resize_size`` when the batch step will rotate or crop it, else the
    model's ``image_size`` as evaluation does. uint8 out, no randomness: the cache can keep it."""
    side = prep.resize_size if crop or rotate else prep.image_size
    return TwoStage(v2.Compose([*decode_steps(prep), v2.CenterCrop(side)]), v2.Identity())


def draw_uniforms(count: int, seeds: list[int] | None = None) -> torch.Tensor:
    """(count, PARAMETERS) uniforms in [0, 1), one row per image, from which all its random choices
    are made. With ``seeds``, row i is a hash of seeds[i] alone (splitmix64, computed for the whole
    batch at once), so an image's augmentation does not depend on which batch, micro-batch or process
    it lands in; without, the rows come from torch's global generator."""
    if seeds is None:
        return torch.rand(count, PARAMETERS)
    keys = torch.tensor(seeds, dtype=torch.int64)[:, None] * PARAMETERS + torch.arange(PARAMETERS)
    return (splitmix64(keys) >> 11 & (2**53 - 1)).double().div(2.0**53).float()


def splitmix64(keys: torch.Tensor) -> torch.Tensor:
    """The splitmix64 mix of int64 ``keys`` (wrapping arithmetic; shifts made logical with masks)."""
    def shifted(z: torch.Tensor, bits: int) -> torch.Tensor:
        return (z >> bits) & ((1 << (64 - bits)) - 1)
    z = keys + SPLITMIX[0]
    z = (z ^ shifted(z, 30)) * SPLITMIX[1]
    z = (z ^ shifted(z, 27)) * SPLITMIX[2]
    return z ^ shifted(z, 31)


def crop_boxes(uniforms: torch.Tensor) -> torch.Tensor:
    """Per image, (width, height, x centre, y centre) of a random resized crop as fractions of the
    square, from 4 uniforms each: area in CROP_SCALE, aspect ratio log-uniform in CROP_RATIO; a box
    that would not fit is shrunk to fit its aspect ratio (torchvision retries ten times and falls
    back to the centre; this keeps the draw in one pass)."""
    area = CROP_SCALE[0] + (CROP_SCALE[1] - CROP_SCALE[0]) * uniforms[:, 0]
    low, high = math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])
    ratio = (low + (high - low) * uniforms[:, 1]).exp()
    width, height = (area * ratio).sqrt(), (area / ratio).sqrt()
    too_big = torch.maximum(width, height).clamp(min=1.0)
    width, height = width / too_big, height / too_big
    x = (1 - width) * uniforms[:, 2] + width / 2
    y = (1 - height) * uniforms[:, 3] + height / 2
    return torch.stack([width, height, x, y], dim=1)


def jitter_choices(uniforms: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """From 4 uniforms per image: the brightness, contrast and saturation factors (N, 3), each in
    [1 - JITTER, 1 + JITTER], and which of the three goes first (N,)."""
    factors = 1 - JITTER + 2 * JITTER * uniforms[:, :3]
    return factors, (uniforms[:, 3] * 3).long().clamp(max=2)


class BatchAugment:
    """uint8 batch (N, 3, S, S) on any device -> augmented, normalised float batch (N, 3, size, size)."""

    def __init__(self, prep: Preprocessing, crop: bool = True, flip: bool = True, rotate: bool = True,
                 color_jitter: bool = True):
        self.size = prep.image_size
        self.crop, self.flip, self.rotate, self.color_jitter = crop, flip, rotate, color_jitter
        self.to_float, self.normalise = normalise_steps(prep)  # the very steps of eval_transform
        self.mean, self.std = torch.tensor(prep.mean), torch.tensor(prep.std)
        self.constants: dict[tuple, tuple[torch.Tensor, ...]] = {}  # per (device, dtype): copied once

    def on_device(self, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
        """mean, std and the grey weights where the batch is, copied there once (a copy every step
        would make the CPU wait for the GPU)."""
        key = (device, dtype)
        if key not in self.constants:
            self.constants[key] = tuple(t.to(device, dtype) for t in (self.mean, self.std,
                                                                      torch.tensor(GREY_WEIGHTS)))
        return self.constants[key]

    def __call__(self, images: torch.Tensor, seeds: list[int] | None = None) -> torch.Tensor:
        """Augment ``images``; ``seeds``: one per image (see draw_uniforms)."""
        uniforms = draw_uniforms(len(images), seeds)
        flips = (uniforms[:, 0] < 0.5) & self.flip
        jitter_draw = jitter_choices(uniforms[:, 6:]) if self.color_jitter else None
        if not (self.crop or self.rotate):  # nothing to resample: eval_transform's own steps, exactly
            pixels = self.to_float(images)
            if flips.any():
                flipped = flips.to(pixels.device, non_blocking=True)[:, None, None, None]
                pixels = torch.where(flipped, pixels.flip(-1), pixels)
            if jitter_draw:
                pixels = jitter(pixels, *jitter_draw, grey=self.on_device(pixels.device, pixels.dtype)[2])
            return self.normalise(pixels)
        theta = self.affine(images.shape[-1], flips, uniforms)
        return self.colour_and_normalise(self.resample(images.float(), theta), jitter_draw)  # still 0..255

    def colour_and_normalise(self, pixels: torch.Tensor,
                             jitter_draw: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        """0..255 floats -> jittered, clamped to [0, 1] and normalised, in one batched 3x3 map per image
        and one clamp: the division by 255 and the normalisation are folded into the map, and the
        clamp to [0, 1] becomes a clamp to the normalised image of [0, 1] per channel."""
        count, _, height, width = pixels.shape
        device, dtype = pixels.device, pixels.dtype
        mean, std, grey = self.on_device(device, dtype)
        if jitter_draw:  # contrast needs each image's mean colour: every other pixel is plenty
            means = pixels[:, :, ::2, ::2].mean((2, 3)) / 255
            matrix, offset = jitter_matrices(means, *jitter_draw, grey=grey)
        else:
            matrix = torch.eye(3, device=device, dtype=dtype).expand(count, 3, 3)
            offset = torch.zeros(count, 3, device=device, dtype=dtype)
        matrix, offset = matrix / (255 * std[None, :, None]), (offset - mean) / std
        mapped = torch.baddbmm(offset[:, :, None], matrix, pixels.reshape(count, 3, height * width))
        low, high = (((bound - mean) / std)[None, :, None] for bound in (0.0, 1.0))
        return torch.clamp(mapped, low, high, out=mapped).reshape(pixels.shape)

    def affine(self, source_side: int, flips: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
        """(N, 2, 3) matrices from output coordinates to input coordinates (both in [-1, 1]): the crop
        box (or the centred ``size`` window), flipped, rotated about the centre."""
        count = len(uniforms)
        if self.crop:
            width, height, x, y = crop_boxes(uniforms[:, 1:5]).unbind(1)
            centre_x, centre_y = 2 * x - 1, 2 * y - 1
        else:
            width = height = torch.full((count,), self.size / source_side)
            centre_x = centre_y = torch.zeros(count)
        angle = (2 * uniforms[:, 5] - 1) * ROTATION_DEGREES if self.rotate else torch.zeros(count)
        cos, sin = torch.cos(angle.deg2rad()), torch.sin(angle.deg2rad())
        scale_x = torch.where(flips, -width, width)
        # output (u, v) -> crop point (centre + scale * (u, v)) -> rotated about the image centre
        rows = [torch.stack([cos * scale_x, -sin * height, cos * centre_x - sin * centre_y], 1),
                torch.stack([sin * scale_x, cos * height, sin * centre_x + cos * centre_y], 1)]
        return torch.stack(rows, 1)

    def resample(self, pixels: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        """Rotation, crop and flip in one bilinear resampling; outside the image is black, as
        torchvision fills a rotation."""
        theta = theta.to(pixels.device, pixels.dtype, non_blocking=True)
        return F.grid_sample(pixels, sampling_grid(theta, self.size), mode="bilinear", padding_mode="zeros",
                             align_corners=False)


def sampling_grid(theta: torch.Tensor, size: int) -> torch.Tensor:
    """``F.affine_grid(theta, (N, C, size, size), align_corners=False)``, computed as two broadcast
    multiply-adds per coordinate instead of a batched matmul over every pixel (several times faster on
    CPUs)."""
    centres = (torch.arange(size, device=theta.device, dtype=theta.dtype) * 2 + 1) / size - 1
    u, v = centres[None, None, :], centres[None, :, None]
    grid = torch.empty(len(theta), size, size, 2, device=theta.device, dtype=theta.dtype)
    for axis in range(2):
        a = theta[:, axis, :, None, None]
        torch.add(a[:, 0] * u, a[:, 1] * v + a[:, 2], out=grid[..., axis])
    return grid


def jitter_matrices(means: torch.Tensor, factors: torch.Tensor, first: torch.Tensor,
                    grey: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image, the colour jitter as one affine map ``A @ rgb + t`` (A: (N, 3, 3), t: (N, 3)).

    Brightness, contrast and saturation (factors in [1 - JITTER, 1 + JITTER], torchvision's blends
    with black, the mean grey and the greyscale) are each linear in the colour, so in any order they
    compose into one map, in the order brightness, contrast, saturation rotated to start at ``first``.
    ``factors``: (N, 3) in that order (jitter_choices). ``means``: each image's mean colour (N, 3),
    which contrast needs; ``grey``: GREY_WEIGHTS on the means' device. torchvision clamps to [0, 1]
    after every step; here the one clamp comes after the composed map."""
    count, device, dtype = len(means), means.device, means.dtype
    # drawn on the CPU, computed where the means are: no wait for the GPU
    factors = factors.to(device, dtype, non_blocking=True)
    first = first.to(device, non_blocking=True)
    grey = torch.tensor(GREY_WEIGHTS, device=device, dtype=dtype) if grey is None else grey
    eye = torch.eye(3, device=device, dtype=dtype).expand(count, 3, 3)
    matrix, offset = eye.clone(), torch.zeros(count, 3, device=device, dtype=dtype)
    for position in range(3):
        operation = (first + position) % 3  # 0 brightness, 1 contrast, 2 saturation: each image gets all
        factor = factors.gather(1, operation[:, None])
        current_grey = ((matrix @ means[:, :, None])[:, :, 0] + offset) @ grey  # mean grey so far, (N,)
        # saturation blends every channel with the pixel's grey: s * I + (1 - s) * (ones x grey)
        saturate = factor[:, :, None] * eye + (1 - factor)[:, :, None] * grey.expand(count, 3, 3)
        blend = torch.where((operation == 2)[:, None, None], saturate, factor[:, :, None] * eye)
        shift = torch.where(operation == 1, (1 - factor[:, 0]) * current_grey, 0.0)
        matrix, offset = blend @ matrix, (blend @ offset[:, :, None])[:, :, 0] + shift[:, None]
    return matrix, offset


def jitter(pixels: torch.Tensor, factors: torch.Tensor, first: torch.Tensor,
           grey: torch.Tensor | None = None) -> torch.Tensor:
    """Colour jitter of a float batch in [0, 1] (jitter_matrices): one batched 3x3 map, then a clamp."""
    matrix, offset = jitter_matrices(pixels.mean((2, 3)), factors, first, grey)
    count, _, height, width = pixels.shape
    mapped = torch.baddbmm(offset[:, :, None], matrix, pixels.reshape(count, 3, height * width))
    return mapped.clamp_(0, 1).reshape(pixels.shape)
