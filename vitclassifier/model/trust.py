"""Checks of what a model file says, made before anything uses it.

A checkpoint, a training state or an export may come from anyone: it is input, not truth. Its label
map, preprocessing, temperature, export metadata and weights are checked here; whatever fails is
one ``cannot load WHAT PATH: reason`` UserError. Nothing a file holds is executed, and its weights
header is compared with its config before a network is built, so a 1 KB edit of config.json cannot
make us allocate gigabytes or fill layers with random weights.
"""
from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import torch
from torch import nn

from vitclassifier.data.transforms import Preprocessing
from vitclassifier.errors import UserError
from vitclassifier.text import printable

MAX_IMAGE_SIZE = 4096  # the largest input side a model file may ask for (one image: 200 MB as float)
MAX_RESIZE = 2 * MAX_IMAGE_SIZE  # image_size / crop_pct: what images are resized to before the crop
HEAD = "classifier"  # our head's module (model/vit.py): the part fine-tuning replaces on purpose
# config fields counting blocks (each block holds several tensors) and fields that are tensor widths
LAYER_COUNTS = ("num_hidden_layers", "num_layers", "n_layer", "depth", "depths", "num_blocks")
WIDTHS = ("hidden_size", "hidden_sizes", "intermediate_size", "embed_dim", "num_attention_heads",
          "num_channels", "patch_size")
NAMED = 5  # how many weight names a refusal lists


def refusal(where: str, reason: str) -> UserError:
    """The one error for a file that fails a check: ``cannot load WHERE: reason`` (control characters
    escaped, so a hostile name can't drive the terminal)."""
    return UserError(f"cannot load {printable(where)}: {printable(reason)}")


def first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_labels(labels: object, where: str, width: int | None = None) -> list[str]:
    """Class names: a list of distinct, non-empty strings (``width`` of them, when known)."""
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) and x for x in labels):
        raise refusal(where, "its labels must be a list of non-empty strings")
    twice = sorted(name for name, count in Counter(labels).items() if count > 1)
    if twice:
        raise refusal(where, f"its labels name a class more than once: {', '.join(map(repr, twice))}")
    if width is not None and width != len(labels):
        raise refusal(where, f"it names {len(labels)} labels but its classification head has {width} outputs")
    return labels


def label_names(id2label: object, where: str) -> list[str]:
    """config.json's id2label as a list: keys exactly 0..n-1, values distinct strings."""
    if not isinstance(id2label, dict) or not id2label:
        raise refusal(where, "config.json id2label must map 0, 1, ... to class names")
    keys = sorted(str(key) for key in id2label)
    if set(keys) != {str(i) for i in range(len(keys))}:
        raise refusal(where, f"config.json id2label keys must be 0 to {len(keys) - 1}, "
                             f"not {', '.join(keys[:10])}")
    return check_labels([id2label.get(str(i), id2label.get(i)) for i in range(len(keys))], where)


def check_temperature(value: object, where: str) -> float:
    """A calibrated softmax temperature: a finite number > 0 (T <= 0 would turn the ranking over)."""
    if not is_number(value) or not math.isfinite(value) or value <= 0:
        raise refusal(where, f"its temperature must be a finite number above 0, not {str(value)[:40]!r}")
    return float(value)


def read_json_object(path: Path, where: str) -> dict:
    """A JSON file that must hold an object (config.json, training_info.json, ...)."""
    try:
        value = json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:  # ValueError: not JSON, or not UTF-8
        raise refusal(where, f"{Path(path).name} is not JSON ({first_line(error)})") from None
    if not isinstance(value, dict):
        raise refusal(where, f"{Path(path).name} must hold a JSON object, not {type(value).__name__}")
    return value


def read_info_text(path: Path, where: str) -> dict:
    """training_info.json: an object whose temperature, if any, is valid."""
    info = read_json_object(path, where)
    if "temperature" in info:
        info["temperature"] = check_temperature(info["temperature"], where)
    return info


def check_preprocessing(prep: Preprocessing, where: str, model_size: object = None) -> Preprocessing:
    """Size an int from 1 to MAX_IMAGE_SIZE (and the model's own size when it has one), crop in (0, 1],
    three finite means, three finite stds above 0."""
    size, crop, mean, std = prep.image_size, prep.crop_pct, prep.mean, prep.std
    problems = [
        (isinstance(size, int) and not isinstance(size, bool) and 1 <= size <= MAX_IMAGE_SIZE,
         f"its image size must be a whole number from 1 to {MAX_IMAGE_SIZE}, not {str(size)[:20]!r}"),
        (is_number(crop) and math.isfinite(crop) and 0 < crop <= 1,
         f"its crop_pct must be in (0, 1], not {str(crop)[:20]!r}"),
        (_three(mean, lambda x: True), "its mean must be 3 finite numbers (one per RGB channel)"),
        (_three(std, lambda x: x > 0), "its std must be 3 finite numbers above 0 (one per RGB channel)"),
    ]
    for ok, reason in problems:
        if not ok:
            raise refusal(where, reason)
    if prep.resize_size > MAX_RESIZE:
        raise refusal(where, f"its crop_pct {crop} makes images {prep.resize_size} px before the crop")
    if is_number(model_size) and model_size != size:
        raise refusal(where, f"its preprocessing makes {size} px images but the model takes {model_size} px")
    return Preprocessing(size, float(crop), tuple(map(float, mean)), tuple(map(float, std)))


def check_processor_sizes(raw: dict, where: str) -> None:
    """preprocessor_config.json's size and crop_size, read raw: whole numbers from 1 to MAX_RESIZE
    (Preprocessing.from_image_processor would take a 0 for "not given" and use a default)."""
    for key in ("size", "crop_size"):
        value = raw.get(key)
        numbers = list(value.values()) if isinstance(value, dict) else [] if value is None else [value]
        if not all(isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= MAX_RESIZE for n in numbers):
            raise refusal(where, f"preprocessor_config.json {key} must hold whole numbers from 1 to "
                                 f"{MAX_RESIZE}, not {str(value)[:40]}")


def _three(values: object, ok) -> bool:
    return (isinstance(values, (list, tuple)) and len(values) == 3
            and all(is_number(x) and math.isfinite(x) and ok(x) for x in values))


def preprocessing_from_meta(meta: dict, where: str) -> Preprocessing:
    """An export's preprocessing (describe()'s fields), checked as a checkpoint's is."""
    prep = Preprocessing(meta["image_size"], meta["crop_pct"], meta["mean"], meta["std"])
    return check_preprocessing(prep, where)


def read_weights_header(files: list[Path], where: str) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes from safetensors headers only (no tensor is read)."""
    from safetensors import SafetensorError, safe_open
    shapes = {}
    for file in files:
        try:
            with safe_open(str(file), "pt") as handle:
                for name in handle.keys():
                    shapes[name] = tuple(handle.get_slice(name).get_shape())
        except (SafetensorError, OSError) as error:  # truncated, empty, a header length of exabytes
            raise refusal(where, f"{Path(file).name} is damaged: {first_line(error)}") from None
    if not shapes:
        raise refusal(where, "its weights file holds no tensors")
    return shapes


def shard_names(index: Path, where: str) -> list[str]:
    """The files a model.safetensors.index.json names: plain .safetensors names in its own folder."""
    weight_map = read_json_object(index, where).get("weight_map")
    names = sorted(set(weight_map.values())) if isinstance(weight_map, dict) else []
    if not names or not all(isinstance(n, str) and n == Path(n).name and n.endswith(".safetensors")
                            and not n.startswith(".") for n in names):
        raise refusal(where, f"{index.name} must name .safetensors files beside it")
    return names


def _config_bounds(config, header: dict[str, tuple[int, ...]], where: str) -> None:
    """Cheap limits before even a bodiless network is built: no more blocks than the file has
    tensors, no width above its widest tensor, no input side above MAX_IMAGE_SIZE."""
    values = config.to_dict()
    widest = max((max(shape, default=1) for shape in header.values()), default=0)
    for names, limit, what in ((LAYER_COUNTS, len(header), f"its weights hold {len(header)} tensors"),
                               (WIDTHS, widest, f"its widest weight is {widest}"),
                               (("image_size",), MAX_IMAGE_SIZE, f"the limit is {MAX_IMAGE_SIZE}")):
        for name in names:
            value = values.get(name)
            numbers = value if isinstance(value, (list, tuple)) else [value]
            total = sum(n for n in numbers if is_number(n)) if name == "depths" else max(
                (n for n in numbers if is_number(n)), default=0)
            if total > limit:
                raise refusal(where, f"config.json says {name} {str(value)[:40]}, but {what}")


def check_weights_fit(config, header: dict[str, tuple[int, ...]], where: str, head_may_differ: bool) -> None:
    """Every weight ``config`` asks for is in the safetensors ``header`` with its shape (counted as a
    multiset, so transformers' key renames don't matter), checked on a bodiless ("meta") network.
    ``head_may_differ``: fine-tuning, where the classification head is replaced anyway."""
    from transformers import AutoModelForImageClassification
    _config_bounds(config, header, where)
    try:
        with torch.device("meta"):
            network = AutoModelForImageClassification.from_config(config, trust_remote_code=False)
    except Exception as error:  # whatever config.json's values make fail, the file is at fault
        raise refusal(where, f"config.json does not describe a network: {first_line(error)}") from None
    available = Counter(header.values())
    absent = []
    for name, parameter in network.named_parameters():
        if head_may_differ and name.split(".")[0] == HEAD:
            continue
        if available[tuple(parameter.shape)] > 0:
            available[tuple(parameter.shape)] -= 1
        else:
            absent.append(f"{name} {list(parameter.shape)}")
    if absent:
        raise refusal(where, f"config.json asks for {len(absent)} weight(s) its safetensors file lacks "
                             f"(e.g. {', '.join(absent[-NAMED:])}); refusing to fill them with random values")


def check_loading_info(info: dict, where: str, head_may_differ: bool) -> None:
    """transformers' own report of a load: nothing missing, unexpected or mis-shaped (for fine-tuning,
    only the head may be missing or resized, and a pooler or head we don't use may be left over)."""
    def ours(name: str) -> bool:
        return head_may_differ and name.split(".")[0] == HEAD

    def unused(name: str) -> bool:
        return head_may_differ and (HEAD in name.split(".") or "pooler" in name.split("."))

    mismatched = [k[0] if isinstance(k, tuple) else k for k in info.get("mismatched_keys", ())]
    problems = {
        "missing": sorted(k for k in info.get("missing_keys", ()) if not ours(k)),
        "unexpected": sorted(k for k in info.get("unexpected_keys", ()) if not unused(k)),
        "mis-shaped": sorted(k for k in mismatched if not ours(k)),
        "unreadable": [first_line(RuntimeError(m)) for m in info.get("error_msgs", ())],
    }
    said = [f"{kind}: {', '.join(names[:NAMED])}{' ...' if len(names) > NAMED else ''} ({len(names)})"
            for kind, names in problems.items() if names]
    if said:
        raise refusal(where, f"its weights don't fit its config ({'; '.join(said)}); "
                             f"refusing to fill them with random values")


def load_verified(source: str | Path, where: str, head_may_differ: bool, **options) -> nn.Module:
    """``from_pretrained`` from safetensors only, refusing (naming the keys) when transformers reports
    weights missing, unexpected or mis-shaped instead of silently initialising them at random."""
    from safetensors import SafetensorError
    from transformers import AutoModelForImageClassification
    try:
        model, info = AutoModelForImageClassification.from_pretrained(
            source, output_loading_info=True, use_safetensors=True, trust_remote_code=False, **options)
    except (OSError, ValueError, RuntimeError, SafetensorError) as error:  # RuntimeError: a size mismatch
        raise refusal(where, first_line(error)) from None
    check_loading_info(info, where, head_may_differ)
    return model
