"""Data and model for the ViT image classifier.

This module holds what train.py and predict.py share:
  * the folder data set (one sub-folder per class), its split and transforms,
  * the model wrapper: presets, loading from the Hub or a local directory,
    our own classification head, freezing,
  * the data command line: ``python classifier.py --generate-data`` (drawn by synthetic.py).

Safe image decoding lives in images.py, checkpoint files in checkpoint.py.
"""
from __future__ import annotations

import argparse
import os
import random
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch
from PIL import Image
from torch import nn
from torch.utils.data import Dataset
from torchvision.transforms import v2

from images import IMAGE_EXTENSIONS, load_image


class UserError(Exception):
    """A mistake the user can fix: printed as one line, no traceback."""


# ---------------------------------------------------------------------------
# The folder data set
# ---------------------------------------------------------------------------
def _is_hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def list_images(folder: Path) -> list[Path]:
    """Image files under ``folder``, recursively, sorted; hidden files and folders are skipped."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for filename in sorted(filenames):
            if not filename.startswith(".") and Path(filename).suffix.lower() in IMAGE_EXTENSIONS:
                found.append(Path(dirpath) / filename)
    return found


def scan_class_folders(root: Path) -> dict[str, list[Path]]:
    """Map each class (sub-folder name, sorted) to its image files; empty classes are left out."""
    if not root.is_dir():
        raise UserError(f"data folder {root} does not exist. Point --data at a folder with one "
                        f"sub-folder per class, or run `python classifier.py --generate-data` first")
    classes = {}
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = list_images(sub)
        if files:
            classes[sub.name] = files
        else:
            print(f"warning: class folder {sub} has no images; leaving it out", file=sys.stderr)
    if len(classes) < 2:
        raise UserError(f"{root} needs at least two class sub-folders with images, found {len(classes)}")
    return classes


def stratified_split(classes: dict[str, list[Path]], val_split: float, seed: int):
    """Split every class on its own with a seeded shuffle, so both sides keep the class balance."""
    train, val = [], []
    for label, name in enumerate(sorted(classes)):
        files = list(classes[name])
        if len(files) < 2:
            raise UserError(f"class {name!r} has {len(files)} image; a train/validation split needs at "
                            f"least 2 per class (add images or provide train/ and val/ folders)")
        random.Random(f"{seed}/{name}").shuffle(files)
        n_val = min(len(files) - 1, max(1, round(len(files) * val_split)))
        val += [(path, label) for path in files[:n_val]]
        train += [(path, label) for path in files[n_val:]]
    return train, val


def load_splits(root: Path, val_split: float, seed: int):
    """Return (labels, train samples, val samples); uses root/train and root/val when present."""
    val_dir = next((root / n for n in ("val", "validation") if (root / n).is_dir()), None)
    if (root / "train").is_dir() and val_dir is not None:
        train_classes = scan_class_folders(root / "train")
        val_classes = scan_class_folders(val_dir)
        unknown = sorted(set(val_classes) - set(train_classes))
        if unknown:
            raise UserError(f"{val_dir} has classes that {root / 'train'} lacks: {', '.join(unknown)}")
        labels = sorted(train_classes)
        index = {name: i for i, name in enumerate(labels)}
        train = [(p, index[n]) for n in labels for p in train_classes[n]]
        val = [(p, index[n]) for n in sorted(val_classes) for p in val_classes[n]]
        return labels, train, val
    classes = scan_class_folders(root)
    return sorted(classes), *stratified_split(classes, val_split, seed)


class ImageFolderDataset(Dataset):
    """(path, label) samples decoded on demand. A file that fails to decode yields
    ``(None, label, path, reason)`` instead of raising, so one bad image never stops a run."""

    def __init__(self, samples: list[tuple[Path, int]], transform, decode_size: int | None = None):
        self.samples, self.transform, self.decode_size = samples, transform, decode_size

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, label = self.samples[index]
        try:
            image = load_image(path, self.decode_size)
        except (OSError, ValueError, Image.DecompressionBombError) as error:
            return None, label, str(path), str(error)
        return self.transform(image), label, str(path), None


def collate_skipping_bad(batch):
    """Stack the good samples. Returns (images, labels, their paths, [(bad path, reason)]);
    images and labels are None when the whole batch was bad."""
    good = [item for item in batch if item[0] is not None]
    bad = [(item[2], item[3]) for item in batch if item[0] is None]
    if not good:
        return None, None, [], bad
    return (torch.stack([item[0] for item in good]), torch.tensor([item[1] for item in good]),
            [item[2] for item in good], bad)


# ---------------------------------------------------------------------------
# Preprocessing: one definition, read from and written to the checkpoint
# ---------------------------------------------------------------------------
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
    def from_image_processor(cls, processor, image_size: int | None = None) -> "Preprocessing":
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


def eval_transform(prep: Preprocessing) -> v2.Compose:
    """THE evaluation preprocessing: validation and predict.py both use exactly this."""
    return v2.Compose([
        v2.PILToTensor(),
        v2.Resize(prep.resize_size, interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
        v2.CenterCrop(prep.image_size),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(prep.mean, prep.std),
    ])


def train_transform(prep: Preprocessing, crop: bool = True, flip: bool = True, rotate: bool = True,
                    color_jitter: bool = True) -> v2.Compose:
    """Training augmentation; each part can be switched off. Ends like eval_transform."""
    steps = [v2.PILToTensor()]
    if rotate:
        steps.append(v2.RandomRotation(15, interpolation=v2.InterpolationMode.BILINEAR))
    if crop:
        steps.append(v2.RandomResizedCrop(prep.image_size, scale=(0.6, 1.0), antialias=True))
    else:
        steps += [v2.Resize(prep.resize_size, antialias=True), v2.CenterCrop(prep.image_size)]
    if flip:
        steps.append(v2.RandomHorizontalFlip())
    if color_jitter:
        steps.append(v2.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.05))
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(prep.mean, prep.std)]
    return v2.Compose(steps)


# ---------------------------------------------------------------------------
# The model: presets, loading, our head, freezing, saving
# ---------------------------------------------------------------------------
IMAGENET_MEAN_STD = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
INCEPTION_MEAN_STD = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
# preset -> (public pre-trained checkpoint, its architecture, its normalisation); the architecture
# lets --no-pretrained build the same network offline with random weights.
PRESETS = {
    "vit-tiny": ("facebook/deit-tiny-patch16-224", (192, 12, 3), IMAGENET_MEAN_STD),
    "vit-small": ("facebook/deit-small-patch16-224", (384, 12, 6), IMAGENET_MEAN_STD),
    "vit-base": ("google/vit-base-patch16-224-in21k", (768, 12, 12), INCEPTION_MEAN_STD),
    "vit-large": ("google/vit-large-patch16-224-in21k", (1024, 24, 16), INCEPTION_MEAN_STD),
}


class DropoutLinear(nn.Linear):
    """Our classification head: dropout, then a linear layer. It subclasses nn.Linear so its
    weights save as ``classifier.weight``/``classifier.bias`` and a plain Hugging Face
    model (e.g. transformers.pipeline) loads our checkpoints unchanged."""

    def __init__(self, in_features: int, out_features: int, dropout: float):
        super().__init__(in_features, out_features)
        self.dropout = nn.Dropout(dropout)
        nn.init.trunc_normal_(self.weight, std=0.02)
        nn.init.zeros_(self.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return super().forward(self.dropout(features))


def _hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on"):
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def resolve_source(name: str) -> tuple[str, bool]:
    """Turn a preset, local directory or Hub id into (source, local_files_only).

    Fails fast with the ways out when the weights can't be had, instead of a long retry loop
    and a traceback."""
    if name in PRESETS:
        name = PRESETS[name][0]
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UserError(f"{path} is not a model checkpoint (no config.json in it)")
        return str(path), True
    if path.suffix or name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise UserError(f"model {name!r} not found: not a preset ({', '.join(PRESETS)}) nor a directory")
    from huggingface_hub import try_to_load_from_cache
    cached = isinstance(try_to_load_from_cache(name, "config.json"), str)
    if _hub_reachable():
        return name, False
    if cached:
        return name, True
    raise UserError(
        f"the pre-trained weights of {name!r} can't be downloaded (no connection to the Hugging Face Hub) "
        f"and are not in the local cache. Ways out: connect once so they are cached; pass a local "
        f"checkpoint with --model /path/to/checkpoint; or train from random weights with --no-pretrained")


def _replace_head(model: nn.Module, num_labels: int, dropout: float, keep_weights: bool) -> None:
    """Put a DropoutLinear sized for our classes where the model keeps its classifier."""
    head = getattr(model, "classifier", None)
    if isinstance(head, nn.Sequential) and isinstance(head[-1], nn.Linear):
        parent, key, linear = head, str(len(head) - 1), head[-1]
    elif isinstance(head, nn.Linear):
        parent, key, linear = model, "classifier", head
    else:
        raise UserError(f"{type(model).__name__} has no linear `classifier` head this tool can replace")
    new_head = DropoutLinear(linear.in_features, num_labels, dropout)
    if keep_weights:  # same classes as the checkpoint: continue from its trained head
        new_head.load_state_dict(linear.state_dict())
    setattr(parent, key, new_head)


def resize_position_embeddings(model: nn.Module, image_size: int) -> None:
    """Interpolate a ViT's position embeddings to a new input size (bicubic on the patch grid)."""
    config, embeddings = model.config, getattr(model.base_model, "embeddings", None)
    if config.image_size == image_size:
        return
    if not isinstance(getattr(embeddings, "position_embeddings", None), nn.Parameter):
        raise UserError(f"--image-size {image_size}: only ViT-style models can change input size here")
    if image_size % config.patch_size:
        raise UserError(f"--image-size must be a multiple of the patch size {config.patch_size}")
    old = embeddings.position_embeddings.data
    old_grid, new_grid = config.image_size // config.patch_size, image_size // config.patch_size
    n_tokens = old.shape[1] - old_grid ** 2  # [CLS] (and distillation) tokens keep their vectors
    grid = old[:, n_tokens:].reshape(1, old_grid, old_grid, -1).permute(0, 3, 1, 2)
    grid = nn.functional.interpolate(grid, size=(new_grid, new_grid), mode="bicubic", align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, new_grid ** 2, -1)
    embeddings.position_embeddings = nn.Parameter(torch.cat([old[:, :n_tokens], grid], dim=1))
    embeddings.image_size = embeddings.patch_embeddings.image_size = (image_size, image_size)
    embeddings.patch_embeddings.num_patches = new_grid ** 2
    config.image_size = image_size


def create_model(name: str, labels: list[str], pretrained: bool = True, dropout: float = 0.1,
                 image_size: int | None = None) -> tuple[nn.Module, Preprocessing]:
    """Build the classifier for ``labels`` from a preset, Hub id or local checkpoint directory.

    With ``pretrained=False`` a preset's architecture is built with random weights, offline."""
    from transformers import (AutoConfig, AutoImageProcessor, AutoModelForImageClassification,
                              ViTConfig, ViTForImageClassification)
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()  # no "Loading weights" bar for a model this size
    id2label = dict(enumerate(labels))
    label2id = {label: i for i, label in id2label.items()}
    if not pretrained:
        if name not in PRESETS:
            raise UserError(f"--no-pretrained needs a preset ({', '.join(PRESETS)}), not {name!r}")
        _, (hidden, layers, heads), (mean, std) = PRESETS[name]
        config = ViTConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                           intermediate_size=4 * hidden, image_size=image_size or 224,
                           id2label=id2label, label2id=label2id)
        model = ViTForImageClassification(config)
        _replace_head(model, len(labels), dropout, keep_weights=False)
        return model, Preprocessing(config.image_size, 0.875, mean, std)
    source, local_only = resolve_source(name)
    old_labels = list(AutoConfig.from_pretrained(source, local_files_only=local_only).id2label.values())
    processor = AutoImageProcessor.from_pretrained(source, local_files_only=local_only)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # we replace the head on purpose: no "newly initialized" warning
    try:
        model = AutoModelForImageClassification.from_pretrained(
            source, num_labels=len(labels), id2label=id2label, label2id=label2id,
            ignore_mismatched_sizes=True, local_files_only=local_only, dtype=torch.float32)
    finally:
        hf_logging.set_verbosity(verbosity)
    _replace_head(model, len(labels), dropout, keep_weights=old_labels == labels)
    if image_size:
        resize_position_embeddings(model, image_size)
    return model, Preprocessing.from_image_processor(processor, image_size)


def encoder_blocks(model: nn.Module) -> nn.ModuleList | None:
    """The transformer blocks, first to last (``layers`` in transformers 5, ``encoder.layer`` before)."""
    base = model.base_model
    for blocks in (getattr(base, "layers", None), getattr(getattr(base, "encoder", None), "layer", None)):
        if isinstance(blocks, nn.ModuleList):
            return blocks
    return None


def freeze(model: nn.Module, spec: str) -> None:
    """``none``: train everything; ``backbone``: only the head; ``N``: head + last N encoder blocks."""
    if spec == "none":
        return
    for parameter in model.parameters():
        parameter.requires_grad = False
    trainable = [model.classifier]
    if spec != "backbone":
        if not spec.isdigit():
            raise UserError(f"--freeze {spec!r}: use none, backbone or a number of encoder blocks")
        blocks = encoder_blocks(model)
        if blocks is None:
            raise UserError(f"--freeze N needs a transformer encoder; use none or backbone for this model")
        trainable += list(blocks)[len(blocks) - int(spec):] if int(spec) else []
        trainable += [m for n, m in model.base_model.named_children() if n in ("layernorm", "norm")]
    for module in trainable:
        for parameter in module.parameters():
            parameter.requires_grad = True


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    from synthetic import DEFAULT_CLASSES, SHAPES, at_least, generate_data, parse_classes
    parser = argparse.ArgumentParser(description="Data tools for the ViT image classifier.")
    parser.add_argument("--generate-data", action="store_true",
                        help="write a synthetic shapes data set (one sub-folder per class) and sample images")
    parser.add_argument("--out", type=Path, default=Path("data"), help="where to write the data set (default: data)")
    parser.add_argument("--classes", type=parse_classes, default=DEFAULT_CLASSES,
                        help=f"comma-separated shapes, or a count; available: {', '.join(SHAPES)} "
                             f"(default: {DEFAULT_CLASSES})")
    parser.add_argument("--per-class", type=at_least(2), default=1000, help="images per class (default: 1000)")
    parser.add_argument("--image-size", type=at_least(16), default=64,
                        help="side of each image in pixels (default: 64)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; same seed, same files (default: 0)")
    parser.add_argument("--samples-dir", type=Path, default=Path("."),
                        help="where sample.jpg and samples/ go (default: current folder)")
    args = parser.parse_args(argv)
    if not args.generate_data:
        parser.print_help()
        return 0
    generate_data(args.out, args.classes, args.per_class, args.image_size, args.seed, args.samples_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
