"""Where a ViT looked: one relevance map per image and class, over the patches the model saw.

``relevance`` (the default) is gradient-weighted attention relevance (Chefer, Gur and Wolf, "Generic
Attention-model Explainability", ICCV 2021): R starts as the identity; for each block,
A_bar = mean over heads of clamp(dlogit/dA * A, min=0) and R <- R + A_bar @ R, where A are the
softmax attention probabilities and the logit is the explained class's (before softmax). The CLS
token's row of R over the patch tokens is the map. The gradient makes it class-specific.

``rollout`` is attention rollout (Abnar and Zuidema 2020): the product over blocks of the
head-averaged attention plus the identity, rows renormalised. It has no gradient, so every class
of an image gets the same map: it says what the model looked at, not why it chose a class.

Neither Captum nor pytorch-grad-cam implements either method for transformers' ViT (their ViT
recipe is a Grad-CAM on the last block), hence this short implementation. Attention
probabilities need transformers' eager attention, which the explaining pass switches to and back
(``explaining``), so ordinary prediction keeps its fast kernels.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from torch import nn

from vitclassifier.data.images import DECODE_ERRORS, load_image
from vitclassifier.data.transforms import Preprocessing, eval_transform
from vitclassifier.devices import autocast

METHODS = ("relevance", "rollout")
# attention implementations that return the softmax probabilities: kept for the explaining pass (our
# bf16_softmax is eager attention with a bf16 softmax, model/attention.py); any other (SDPA, flash) is swapped
RETURNS_PROBABILITIES = ("eager", "bf16_softmax")


@dataclass
class Explained:
    """One batch explained: the logits of the explaining pass, the classes explained and their maps."""
    logits: torch.Tensor  # (batch, classes), float32
    classes: torch.Tensor  # (batch, k): the explained class indices, in the order chosen
    maps: torch.Tensor  # (batch, k, grid rows, grid columns), float32 on the CPU, non-negative


@contextmanager
def explaining(model: nn.Module) -> Iterator[None]:
    """The model in eval mode with an attention that returns its probabilities: transformers' eager
    attention in place of SDPA or flash kernels, which return none. The previous implementation and
    mode come back afterwards, so the caller's fast path is untouched."""
    previous, was_training = model.config._attn_implementation, model.training
    swap = previous not in RETURNS_PROBABILITIES
    if swap:
        model.set_attn_implementation("eager")
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)
        if swap:
            model.set_attn_implementation(previous)


def patch_grid(model: nn.Module) -> tuple[int, int]:
    """The model's patch grid (rows, columns): image size over patch size, read from its config."""
    config = model.config
    size, patch = config.image_size, config.patch_size
    rows, columns = (size, size) if isinstance(size, int) else size
    step_y, step_x = (patch, patch) if isinstance(patch, int) else patch
    return rows // step_y, columns // step_x


def gradient_relevance(attentions: list[torch.Tensor], gradients: list[torch.Tensor]) -> torch.Tensor:
    """Chefer et al.'s relevance of every token for the CLS token: (k, batch, tokens), from each
    block's attention probabilities (batch, heads, tokens, tokens) and their gradients, one per
    explained class (k, batch, heads, tokens, tokens)."""
    k, batch = gradients[0].shape[:2]
    tokens = attentions[0].shape[-1]
    eye = torch.eye(tokens, device=attentions[0].device)
    relevance = eye.expand(k, batch, tokens, tokens)
    for attention, gradient in zip(attentions, gradients):
        weighted = (gradient.float() * attention.float().unsqueeze(0)).clamp(min=0).mean(dim=2)
        relevance = relevance + weighted @ relevance
    return relevance[:, :, 0, :]


def attention_rollout(attentions: list[torch.Tensor]) -> torch.Tensor:
    """Abnar and Zuidema's rollout, the CLS token's row: (batch, tokens). The identity stands for the
    residual connection, as in their paper."""
    tokens = attentions[0].shape[-1]
    eye = torch.eye(tokens, device=attentions[0].device)
    rollout = eye.expand(attentions[0].shape[0], tokens, tokens)
    for attention in attentions:
        mixed = 0.5 * attention.float().mean(dim=1) + 0.5 * eye
        rollout = (mixed / mixed.sum(dim=-1, keepdim=True)) @ rollout
    return rollout[:, 0, :]


def explain_batch(
    model: nn.Module,
    pixels: torch.Tensor,
    choose: Callable[[torch.Tensor], torch.Tensor],
    method: str = "relevance",
    dtype: torch.dtype | None = None,
) -> Explained:
    """Explain a batch of model inputs. ``choose(logits)`` returns the (batch, k) classes to explain;
    all k are explained with one forward pass and one backward pass (the k one-hot gradients run
    batched through autograd with vmap, not k passes)."""
    rows, columns = patch_grid(model)
    # the input asks for gradients too, so the attention has a graph even where the weights ask for none
    pixels = pixels.detach().requires_grad_(method == "relevance")
    with explaining(model), torch.set_grad_enabled(method == "relevance"):
        with autocast(pixels.device, dtype):
            output = model(pixel_values=pixels, output_attentions=True)
        logits, attentions = output.logits, list(output.attentions)
        classes = choose(logits.detach().float())
        k = classes.shape[1]
        if method == "rollout":
            scores = attention_rollout(attentions).unsqueeze(1).expand(-1, k, -1)
        else:
            one_hot = torch.zeros(k, *logits.shape, dtype=logits.dtype, device=logits.device)
            one_hot.scatter_(2, classes.T.unsqueeze(-1).to(logits.device), 1.0)
            if k == 1:  # a plain backward pass: vmap's batching has a cost of its own
                gradients = [g[None] for g in torch.autograd.grad(logits, attentions, one_hot[0])]
            else:
                gradients = torch.autograd.grad(logits, attentions, one_hot, is_grads_batched=True)
            scores = gradient_relevance(attentions, list(gradients)).transpose(0, 1)
    patches = scores[..., -rows * columns:]  # the patch tokens come last, after CLS (and any others)
    maps = patches.detach().float().reshape(*patches.shape[:2], rows, columns).clamp(min=0).cpu()
    return Explained(logits.detach().float(), classes, maps)


def crop_geometry(width: int, height: int, resize_size: int,
                  image_size: int) -> tuple[float, float, float, float]:
    """Where eval_transform's centre crop lies, in the resized image: (scale x, scale y, left, top).
    The same arithmetic as torchvision's Resize(int) and CenterCrop."""
    short, long = sorted((width, height))
    resized_long = int(resize_size * long / short)
    resized_w, resized_h = (resize_size, resized_long) if width <= height else (resized_long, resize_size)
    left = int(round((resized_w - image_size) / 2.0))
    top = int(round((resized_h - image_size) / 2.0))
    return resized_w / width, resized_h / height, left, top


def axis_weights(length: int, scale: float, offset: float, crop: int, cells: int) -> np.ndarray:
    """(length, cells) bilinear weights taking a row (or column) of ``cells`` patch values to the
    ``length`` pixels of the original image; pixels outside the crop get none (the model never
    saw them). Pixel centres and cell centres sit at +0.5, as in align_corners=False."""
    inside_crop = (np.arange(length) + 0.5) * scale - offset  # position in the model's input, pixels
    position = np.clip(inside_crop * cells / crop - 0.5, 0, cells - 1)
    low = np.floor(position).astype(np.int64)
    high = np.minimum(low + 1, cells - 1)
    fraction = (position - low).astype(np.float32)
    weights = np.zeros((length, cells), np.float32)
    pixels = np.arange(length)
    np.add.at(weights, (pixels, low), 1 - fraction)
    np.add.at(weights, (pixels, high), fraction)
    weights[(inside_crop < 0) | (inside_crop >= crop)] = 0
    return weights


def image_weights(width: int, height: int, prep: Preprocessing, grid: tuple[int, int],
                  shown: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The row and column weights that take a (grid rows, grid columns) map to an image of
    ``width`` x ``height`` pixels after EXIF orientation: ``rows @ map @ columns.T``. ``shown``: the
    (width, height) to draw it at instead, for a picture of the same image at another size. Shared
    and read-only: a folder's images mostly have a few sizes, so each pair is made once."""
    return _weights(width, height, prep.resize_size, prep.image_size, tuple(grid), shown)


@lru_cache(maxsize=256)
def _weights(width: int, height: int, resize_size: int, image_size: int, grid: tuple[int, int],
             shown: tuple[int, int] | None) -> tuple[np.ndarray, np.ndarray]:
    scale_x, scale_y, left, top = crop_geometry(width, height, resize_size, image_size)
    out_w, out_h = shown or (width, height)
    rows = axis_weights(out_h, scale_y * height / out_h, top, image_size, grid[0])
    columns = axis_weights(out_w, scale_x * width / out_w, left, image_size, grid[1])
    rows.flags.writeable = columns.flags.writeable = False
    return rows, columns


def upsample(grid_map: np.ndarray, width: int, height: int, prep: Preprocessing,
             shown: tuple[int, int] | None = None) -> np.ndarray:
    """One patch map over the whole image (float32, height x width, or ``shown``'s size), zero
    outside the centre crop the model saw."""
    rows, columns = image_weights(width, height, prep, grid_map.shape, shown)
    return rows @ grid_map.astype(np.float32) @ columns.T


def mistake_maps(
    model: nn.Module,
    prep: Preprocessing,
    mistakes: list[tuple[str, int, int, float]],
    device: torch.device,
    dtype: torch.dtype | None = None,
) -> list[tuple[np.ndarray, np.ndarray] | None]:
    """For the report's most confident mistakes (path, true, predicted, confidence): the maps for
    the class chosen and for the true class, each over the whole image; None for an image that
    cannot be read again (a data-set row, a file gone since)."""
    transform = eval_transform(prep)
    found: dict[int, tuple[torch.Tensor, tuple[int, int]]] = {}
    for index, (path, *_) in enumerate(mistakes):
        try:
            image = load_image(path, prep.resize_size)
            found[index] = transform(image), image.size
        except (*DECODE_ERRORS, TypeError):
            continue
    if not found:
        return [None] * len(mistakes)
    indices = list(found)
    chosen = torch.tensor([[mistakes[i][2], mistakes[i][1]] for i in indices])
    pixels = torch.stack([found[i][0] for i in indices]).to(device, next(model.parameters()).dtype)
    explained = explain_batch(model, pixels, lambda logits: chosen, dtype=dtype)
    maps: list[tuple[np.ndarray, np.ndarray] | None] = [None] * len(mistakes)
    for row, index in enumerate(indices):
        width, height = found[index][1]
        predicted, true = (upsample(m.numpy(), width, height, prep) for m in explained.maps[row])
        maps[index] = (predicted, true)
    return maps
