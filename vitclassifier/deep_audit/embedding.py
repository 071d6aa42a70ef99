"""Every image embedded once by the model's backbone: what its classification head sees.

The model comes through the existing loaders (a trained checkpoint directory, or a preset or Hub id
through create_model, with its one clear message offline), images through the same safe decoding
and evaluation preprocessing as predict.py (``eval_transform`` of the model's ``Preprocessing``).
An image's embedding joins two views of the backbone's last layer, each scaled to length 1: the
input of the model's linear ``classifier`` (caught by a forward pre-hook, so any backbone
create_model accepts works), and, where the backbone gives a sequence of tokens (ViTs), the mean
of its patch tokens. The head's input is what the classifier was trained to separate; the patch
tokens keep more of what an image looks like, which helps to find outliers and duplicates
(docs/audit.md has the figures).

Beside it, each image gets a thumbnail vector (THUMBNAIL x THUMBNAIL pixels in colour, its mean
removed): images that look the same at that scale are near-duplicates whatever the model thinks.
"""
from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from vitclassifier.data.images import DECODE_ERRORS, load_image, read_regular
from vitclassifier.data.transforms import Preprocessing, eval_transform
from vitclassifier.devices import loader_workers, pick_device
from vitclassifier.errors import UserError
from vitclassifier.inference.loading import prepare_model
from vitclassifier.model.checkpoint import is_complete_checkpoint, load_checkpoint
from vitclassifier.model.vit import create_model
from vitclassifier.training.evaluate import EvalContext

EMBEDDING_VERSION = 1  # what an embedding means; raised when that changes, so old caches are ignored
THUMBNAIL = 8  # side of the thumbnail vector: 8 x 8 x 3 = 192 numbers
FLAT = 4.0  # thumbnails whose pixels vary less than this (in grey levels, each colour apart) are blank


@dataclass
class Embedder:
    """A model ready to embed images, and the name of exactly what it computes (the cache key)."""
    model: nn.Module
    prep: Preprocessing
    context: EvalContext  # where it runs: device, autocast dtype (one process)
    identity: str
    features: dict  # the latest batch's head input and backbone tokens, filled by the hooks


def weights_identity(model: nn.Module, prep: Preprocessing, dtype: torch.dtype | None) -> str:
    """A hash of the backbone's weights (the head's are left out: a preset gets a new random head),
    the preprocessing and the precision: two runs with equal identities compute equal embeddings."""
    digest = hashlib.blake2b(f"v{EMBEDDING_VERSION} {prep} {dtype}".encode(), digest_size=16)
    for name, tensor in sorted(model.state_dict().items()):
        if name.startswith("classifier"):
            continue
        digest.update(f"{name} {tuple(tensor.shape)} {tensor.dtype}".encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def load_embedder(name: str, labels: list[str], device_name: str = "auto",
                  precision: str = "auto") -> Embedder:
    """``name``: a trained checkpoint directory, or a preset, Hub id or model folder (create_model)."""
    if Path(name).is_dir() and is_complete_checkpoint(Path(name)):
        model, prep, _ = load_checkpoint(Path(name))
    else:
        model, prep = create_model(name, labels, pretrained=True)
    device = pick_device(device_name)
    head = getattr(model, "classifier", None)
    head = head[-1] if isinstance(head, nn.Sequential) else head
    if not isinstance(head, nn.Linear):
        raise UserError(f"--model {name}: {type(model).__name__} has no linear classifier head whose input "
                        f"the audit could take as the embedding")
    model, dtype = prepare_model(model, device, precision)
    identity = weights_identity(model, prep, dtype)
    features: dict = {}
    head.register_forward_pre_hook(lambda module, inputs: features.update(head=inputs[0]))
    model.base_model.register_forward_hook(lambda module, inputs, output: features.update(tokens=output[0]))
    return Embedder(model, prep, EvalContext(device, dtype), identity, features)


def batch_embeddings(features: dict) -> np.ndarray:
    """The embeddings of the batch the hooks just saw (see the module's docstring)."""
    head, tokens = features.pop("head").float(), features.pop("tokens", None)
    parts = [nn.functional.normalize(head, dim=1)]
    if isinstance(tokens, torch.Tensor) and tokens.dim() == 3 and tokens.shape[1] > 1:
        parts.append(nn.functional.normalize(tokens[:, 1:].float().mean(dim=1), dim=1))
    return torch.cat(parts, dim=1).cpu().numpy()


def read_sample(sample) -> bytes:
    """The encoded bytes of a sample: a regular file's content, or a dataset row's image bytes."""
    if hasattr(sample, "image_bytes"):
        return sample.image_bytes()
    return read_regular(sample)  # a regular file, within the byte bound


def content_hash(sample) -> bytes | None:
    """16 bytes naming a sample's content (None: unreadable; decoding will say why)."""
    try:
        return hashlib.blake2b(read_sample(sample), digest_size=16).digest()
    except (OSError, ValueError, TypeError):
        return None


def thumbnail_vector(image: Image.Image) -> np.ndarray:
    """The centre square of ``image`` as THUMBNAIL x THUMBNAIL colour pixels (box-averaged), its
    mean removed: unchanged by resizing and recompression, and by a uniform brightness shift. A
    near-blank picture (one colour and noise) gives zeros: two of them are not copies of each other."""
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    small = image.resize((THUMBNAIL, THUMBNAIL), Image.BOX, box=(left, top, left + side, top + side))
    pixels = np.asarray(small, np.float32).reshape(-1, 3)
    if (pixels - pixels.mean(axis=0)).std() < FLAT:
        return np.zeros(pixels.size, np.float32)  # no picture to compare: similar to nothing
    return (pixels - pixels.mean()).reshape(-1)


class EmbedDataset(Dataset):
    """Samples decoded for embedding: (pixels or None, thumbnail vector, index, reason or None)."""

    def __init__(self, samples: list, prep: Preprocessing):
        self.samples, self.prep, self.transform = samples, prep, eval_transform(prep)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        try:
            image = load_image(read_sample(self.samples[index]), self.prep.resize_size)
            return self.transform(image), thumbnail_vector(image), index, None
        except DECODE_ERRORS as error:
            return None, None, index, f"{type(error).__name__}: {error}"


def collate(batch: list) -> tuple:
    """(stacked pixels or None, [thumbnail vectors], [indices], [(index, reason)] of unreadable ones)."""
    good = [item for item in batch if item[0] is not None]
    pixels = torch.stack([item[0] for item in good]) if good else None
    return pixels, [item[1] for item in good], [item[2] for item in good], \
        [(item[2], item[3]) for item in batch if item[0] is None]


def embed_samples(embedder: Embedder, samples: list, batch_size: int) -> tuple[dict, list]:
    """Embed ``samples``: ({position: (embedding, thumbnail vector)}, [(position, reason)])."""
    device = embedder.context.device
    workers = loader_workers(None, device)
    loader = DataLoader(EmbedDataset(samples, embedder.prep), batch_size=batch_size, collate_fn=collate,
                        num_workers=workers, pin_memory=device.type == "cuda")
    done, unreadable = {}, []
    with torch.inference_mode(), tqdm(total=len(samples), desc="embedding", unit="img", disable=None,
                                      file=sys.stderr) as progress:
        for pixels, thumbnails, indices, bad in loader:
            unreadable += bad
            if pixels is not None:
                with embedder.context.autocast():
                    embedder.model(pixel_values=pixels.to(device, non_blocking=True))
                done.update(zip(indices, zip(batch_embeddings(embedder.features), thumbnails)))
            progress.update(len(indices) + len(bad))
    return done, unreadable


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to length 1 (float32), so that dot products are cosine similarities."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)
