"""The ViT wrapper: presets, loading from the Hub or a local directory, our classification
head, freezing and input-size changes. Works with any AutoModelForImageClassification backbone
that has a linear ``classifier``; ``--freeze N`` and ``--image-size`` need a ViT-style encoder.
"""
from __future__ import annotations

import difflib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from vitclassifier.data.transforms import Preprocessing
from vitclassifier.errors import UserError
from vitclassifier.hub import hub_reachable
from vitclassifier.model.trust import (
    check_preprocessing,
    check_weights_fit,
    first_line,
    load_verified,
    read_weights_header,
    refusal,
    shard_names,
)

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


SMALL_INPUT, SMALL_INPUT_PATCH = 64, 8  # from random weights, inputs up to this size get this patch size

WAYS_OUT = ("Ways out: connect once so they are cached; pass a local checkpoint with "
            "--model /path/to/checkpoint; or train from random weights with --no-pretrained")


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


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """transformers' notes and progress bars off while we load, trace or convert a model: we report
    what matters ourselves (e.g. the head we replace on purpose is not "newly initialized" news)."""
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)


def preset_hint(name: str) -> str:
    """The note " Did you mean vit-tiny?" for a near miss of a preset's name, else nothing."""
    close = difflib.get_close_matches(name, PRESETS, n=1)
    return f" Did you mean {close[0]}?" if close else ""


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
    if "/" not in name or name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise UserError(f"--model {name!r} is not a preset ({', '.join(PRESETS)}), an existing directory, "
                        f"or a Hub id (owner/name).{preset_hint(name)}")
    from huggingface_hub import try_to_load_from_cache
    cached = isinstance(try_to_load_from_cache(name, "config.json"), str)
    if hub_reachable():
        return name, False
    if cached:
        return name, True
    raise UserError(
        f"the pre-trained weights of {name!r} can't be downloaded (no connection to the Hugging Face Hub) "
        f"and are not in the local cache. {WAYS_OUT}")


def weight_files(source: str, local_only: bool) -> list[Path]:
    """The safetensors files holding ``source``'s weights, a local folder's or a Hub id's (downloaded
    here, into the cache from_pretrained reads). Safetensors only, for Hub ids as for folders: a
    pickled pytorch_model.bin is never read, even by weights_only."""
    folder = Path(source)

    def find(name: str) -> Path | None:
        if folder.is_dir():
            return folder / name if (folder / name).is_file() else None
        return _hub_file(source, name, local_only)

    single = find("model.safetensors")
    if single is not None:
        return [single]
    index = find("model.safetensors.index.json")
    if index is None:
        raise refusal(f"model {source}", "it has no model.safetensors; only safetensors weights are "
                                          "loaded (pickled .bin files can run code)")
    shards = [find(name) for name in shard_names(index, f"model {source}")]
    if None in shards:
        raise refusal(f"model {source}", "a file its model.safetensors.index.json names is missing")
    return shards


def _hub_file(repo: str, name: str, local_only: bool) -> Path | None:
    """``name`` from the Hub repository ``repo`` (from the cache when offline); None: it has none."""
    from huggingface_hub import hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError
    if local_only:
        cached = try_to_load_from_cache(repo, name)
        return Path(cached) if isinstance(cached, str) else None
    try:
        return Path(hf_hub_download(repo, name))
    except EntryNotFoundError:
        return None
    except (HfHubHTTPError, OSError) as error:
        raise UserError(f"could not download {name} of {repo}: {first_line(error)} {WAYS_OUT}") from None


def classifier_head(model: nn.Module) -> tuple[nn.Module, str, nn.Linear]:
    """The linear layer that gives the logits, as (its parent module, its name there, the layer): the
    model's ``classifier``, or the last layer of a ``classifier`` Sequential."""
    head = getattr(model, "classifier", None)
    if isinstance(head, nn.Sequential) and isinstance(head[-1], nn.Linear):
        return head, str(len(head) - 1), head[-1]
    if isinstance(head, nn.Linear):
        return model, "classifier", head
    raise UserError(f"{type(model).__name__} has no linear `classifier` head this tool can replace")


def _replace_head(model: nn.Module, num_labels: int, dropout: float, keep_weights: bool) -> None:
    """Put a DropoutLinear sized for our classes where the model keeps its classifier."""
    parent, key, linear = classifier_head(model)
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


def scratch_patch_size(image_size: int) -> int:
    """The patch size of a ViT built from random weights: the presets' 16 at their 224 px, but
    SMALL_INPUT_PATCH for inputs up to SMALL_INPUT px, where 16-px patches leave a grid too coarse to
    learn shapes from in a few epochs (measured: docs/recipe.md, "From random weights")."""
    return SMALL_INPUT_PATCH if image_size <= SMALL_INPUT else 16


def build_from_scratch(name: str, labels: list[str], dropout: float,
                       image_size: int) -> tuple[nn.Module, Preprocessing]:
    """A preset's architecture with random weights, offline; its patch size (scratch_patch_size) is
    recorded in its config, so prediction, export and the explanations need nothing else."""
    from transformers import ViTConfig, ViTForImageClassification
    if name not in PRESETS:
        raise UserError(f"--no-pretrained needs a preset ({', '.join(PRESETS)}), not {name!r}."
                        f"{preset_hint(name)}")
    patch = scratch_patch_size(image_size)
    if image_size % patch:
        raise UserError(f"--image-size {image_size}: must be a multiple of the patch size {patch}")
    _, (hidden, layers, heads), (mean, std) = PRESETS[name]
    id2label = dict(enumerate(labels))
    config = ViTConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                       intermediate_size=4 * hidden, image_size=image_size, patch_size=patch,
                       id2label=id2label, label2id={label: i for i, label in id2label.items()})
    model = ViTForImageClassification(config)
    _replace_head(model, len(labels), dropout, keep_weights=False)
    return model, Preprocessing(image_size, 0.875, mean, std)


def create_model(name: str, labels: list[str], pretrained: bool = True, dropout: float = 0.1,
                 image_size: int | None = None) -> tuple[nn.Module, Preprocessing]:
    """Build the classifier for ``labels`` from a preset, Hub id or local checkpoint directory.

    With ``pretrained=False`` a preset's architecture is built with random weights, offline."""
    from transformers import AutoConfig, AutoImageProcessor
    if not pretrained:
        return build_from_scratch(name, labels, dropout, image_size or 224)
    id2label = dict(enumerate(labels))
    label2id = {label: i for i, label in id2label.items()}
    source, local_only = resolve_source(name)
    where = f"model {source}"
    try:
        with quiet_transformers():
            # never code from the model (auto_map): trust_remote_code stays off, without a prompt
            old_config = AutoConfig.from_pretrained(source, local_files_only=local_only,
                                                    trust_remote_code=False)
            processor = AutoImageProcessor.from_pretrained(source, local_files_only=local_only,
                                                           trust_remote_code=False)
    except OSError as error:  # e.g. a half-downloaded cache, or a directory missing its files
        raise UserError(f"could not load {source}: {str(error).splitlines()[0]} {WAYS_OUT}") from None
    except (ValueError, TypeError, KeyError) as error:  # a config or preprocessor config we can't use
        raise refusal(where, first_line(error)) from None
    old_labels = list(old_config.id2label.values())
    new_head = old_labels != labels  # only a head we replace anyway may be missing or another size
    check_weights_fit(old_config, read_weights_header(weight_files(source, local_only), where), where,
                      head_may_differ=new_head)
    with quiet_transformers():
        model = load_verified(source, where, new_head, num_labels=len(labels), id2label=id2label,
                              label2id=label2id, ignore_mismatched_sizes=True, local_files_only=local_only,
                              dtype=torch.float32)  # safetensors only, local or from the Hub
    _replace_head(model, len(labels), dropout, keep_weights=not new_head)
    if image_size:
        resize_position_embeddings(model, image_size)
    try:
        prep = Preprocessing.from_image_processor(processor, image_size)
    except (TypeError, ValueError, ZeroDivisionError) as error:
        raise refusal(where, f"preprocessor_config.json: {first_line(error)}") from None
    return model, check_preprocessing(prep, where)


def set_backbone_dropout(model: nn.Module, p: float) -> None:
    """Dropout on the hidden states inside the backbone (ViT has no stochastic depth in transformers)."""
    for module in model.base_model.modules():
        if isinstance(module, nn.Dropout):
            module.p = p
    if hasattr(model.config, "hidden_dropout_prob"):
        model.config.hidden_dropout_prob = p  # saved with the checkpoint


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
            raise UserError("--freeze N needs a transformer encoder; use none or backbone for this model")
        trainable += list(blocks)[len(blocks) - int(spec) :] if int(spec) else []
        trainable += [m for n, m in model.base_model.named_children() if n in ("layernorm", "norm")]
    for module in trainable:
        for parameter in module.parameters():
            parameter.requires_grad = True
