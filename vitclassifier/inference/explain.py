"""predict.py --explain: where the model looked, for each of an image's top-k classes.

For every readable image, two files in the --explain folder, named after the image (a number is
added when two input folders hold the same file name):
  NAME.jpg  the image and, beside it, one heatmap overlay per top-k class, captioned with the
            class and its confidence (JPEG: a PNG would take longer to compress than the model
            takes to explain the image);
  NAME.npy  the raw maps: float32, shape (k, H, W), k in the order of the image's predictions,
            H x W the image's own size after EXIF orientation; non-negative, higher means more
            evidence for that class, zero outside the centre crop the model saw.
The maps come from model/relevance.py; images go through the model in batches, one forward and
one backward pass per batch; a batch's files are written while the next batch is explained (on a
GPU, or where a core is free; else in turn), so a folder of any size takes the memory of two batches.

The folder follows the rules of every output (docs/safety.md): a new or empty folder is claimed
with a marker file; a folder holding files this tool did not write is refused before any work.
Each file is written under a temporary name and renamed into place, never half-written; it is not
fsynced (thousands of fsyncs would cost more than the explaining, and the files can be made again).
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from vitclassifier.data.images import DECODE_ERRORS, FULL_SIZE, load_image
from vitclassifier.data.transforms import Preprocessing, eval_transform
from vitclassifier.devices import usable_cores
from vitclassifier.errors import UserError
from vitclassifier.files import (
    atomic_write_text,
    check_output_folder,
    input_folder,
    refuse_among_inputs,
    refuse_inside,
    write_via_temp,
)
from vitclassifier.inference.loading import LoadedModel
from vitclassifier.inference.predict import confidences, ranked, top_k_results, with_label_sets
from vitclassifier.model.relevance import explain_batch, image_weights, upsample
from vitclassifier.reporting.heatmaps import explanation_picture, panel_image, panel_size
from vitclassifier.text import first_few, printable

MARKER = ".vitclassifier-explanations.json"  # written into every folder --explain claims
STRIP_ELEMENTS = 1 << 22  # the maps of a big image are written a strip of rows (16 MB) at a time
JPEG_QUALITY = 90  # of the pictures: the colours and captions stay clean
NEEDS_CHECKPOINT = "explanations need the checkpoint directory (gradients through the PyTorch model)"


@dataclass
class ExplainedImage:
    """One image explained: its prediction, its maps over the patch grid, the picture-sized image."""
    result: dict  # as inference.predict gives it
    grids: np.ndarray  # (k, grid rows, grid columns) float32
    shown: Image.Image  # the image at the size the picture draws it
    size: tuple[int, int]  # (width, height) after EXIF orientation
    index: int  # its place in the input list


def check_explain_folder(folder: Path, model: Path, inputs: list[str]) -> None:
    """Before any work: ``folder`` can be written, is not inside the model or a folder the inputs are
    read from (a folder given, a file's folder, a glob's: its pictures would be predicted next
    time), and holds nothing this tool did not write."""
    check_output_folder(folder, "--explain")
    refuse_inside(folder, model, "--explain", "the model")
    refuse_among_inputs(folder, map(input_folder, inputs), "--explain", "the input folder")
    if folder.is_dir() and not (folder / MARKER).is_file():
        others = sorted(path.name for path in folder.iterdir())
        if others:
            raise UserError(f"--explain {printable(str(folder))} holds files this tool did not write "
                            f"({first_few([printable(name) for name in others])}); nothing was changed. "
                            f"Give an empty or new folder")


def claim_folder(folder: Path) -> None:
    """Create ``folder`` if needed and mark it as ours (check_explain_folder has allowed it)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"cannot create --explain {folder}: {error.strerror or error}") from None
    if not (folder / MARKER).is_file():
        atomic_write_text(folder / MARKER, json.dumps({"tool": "vitclassifier", "explanations": time.time()}))


def output_names(paths: list[Path]) -> list[str]:
    """A distinct name per input, its file name where that is free: a second "cat.jpg" becomes
    "cat-2.jpg". Compared without case, for file systems that ignore it."""
    used: set[str] = set()
    names = []
    for path in paths:
        stem, suffix = Path(path.name).stem, Path(path.name).suffix
        name, number = path.name, 1
        while name.casefold() in used:
            number += 1
            name = f"{stem}-{number}{suffix}"
        used.add(name.casefold())
        names.append(name)
    return names


class ExplainDataset(Dataset):
    """The images to explain: the model's input (eval_transform, as prediction), the picture-sized
    image and the oriented size, from one decode; a file that fails gives its reason instead."""

    def __init__(self, paths: list[Path], prep: Preprocessing):
        self.paths, self.prep, self.transform = paths, prep, eval_transform(prep)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        path = self.paths[index]
        try:
            image = load_image(path, self.prep.resize_size)
            pixels = self.transform(image)  # may refuse an elongated picture (transforms.BoundedResize)
        except DECODE_ERRORS as error:
            return None, str(path), f"{type(error).__name__}: {error}", index
        size = image.info[FULL_SIZE]  # the maps' size: the picture's own, however it was decoded
        return pixels, str(path), panel_image(image, panel_size(*size)), size, index


def collate_explained(batch):
    """(pixels or None, [(path, shown, size, index)] of the readable images, [(path, reason)])."""
    good = [item for item in batch if item[0] is not None]
    bad = [(item[1], item[2]) for item in batch if item[0] is None]
    pixels = torch.stack([item[0] for item in good]) if good else None
    return pixels, [item[1:] for item in good], bad


def explainable(loaded: LoadedModel) -> nn.Module:
    """The PyTorch model behind ``loaded``; exports have no gradients and are refused."""
    model = loaded.model
    if not isinstance(model, nn.Module) or not hasattr(model, "set_attn_implementation"):
        raise UserError(f"{NEEDS_CHECKPOINT}; this model is an export: pass the checkpoint directory it was "
                        f"exported from as --model, e.g. checkpoints/best")
    return model


def explained_batches(
    loaded: LoadedModel, paths: list[Path], top_k: int, batch_size: int, method: str,
    min_confidence: float = 0.0,
) -> Iterator[tuple[list[ExplainedImage], list[tuple[str, str]]]]:
    """Per batch: the readable images explained for their top-k classes, and the unreadable ones as
    (path, reason). Confidences are ranked exactly as predict.py ranks them."""
    model, k = explainable(loaded), min(top_k, len(loaded.labels))
    several = loaded.multi_label
    loader = DataLoader(ExplainDataset(paths, loaded.prep), batch_size=batch_size,
                        collate_fn=collate_explained, pin_memory=loaded.device.type == "cuda")
    for pixels, items, bad in loader:
        if pixels is None:
            yield [], bad
            continue
        explained = explain_batch(model, pixels.to(loaded.device, non_blocking=True),
                                  lambda logits: ranked([logits], loaded.temperature, k, several)[1],
                                  method, loaded.dtype)
        probabilities = confidences([explained.logits], loaded.temperature, loaded.multi_label)
        results = with_label_sets(top_k_results([item[0] for item in items], probabilities.topk(k, dim=1),
                                                loaded.labels, min_confidence), probabilities, loaded)
        yield [ExplainedImage(result, grids.numpy(), shown, size, index)
               for result, grids, (_, shown, size, index) in zip(results, explained.maps, items)], bad


def write_maps(path: Path, grids: np.ndarray, size: tuple[int, int], prep: Preprocessing) -> None:
    """The (k, H, W) float32 .npy of one image, through a temporary file, a strip of rows at a time."""
    width, height = size
    rows, columns = image_weights(width, height, prep, grids.shape[1:])
    step = max(1, STRIP_ELEMENTS // width)
    header = {"descr": "<f4", "fortran_order": False, "shape": (len(grids), height, width)}

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            np.lib.format.write_array_header_1_0(handle, header)
            for grid in grids:
                across = grid.astype(np.float32) @ columns.T  # (grid rows, W)
                for top in range(0, height, step):
                    handle.write(np.ascontiguousarray(rows[top:top + step] @ across, "<f4").data)

    write_via_temp(path, write, durable=False, opened=True)


def write_explanation(folder: Path, name: str, item: ExplainedImage, prep: Preprocessing) -> dict:
    """NAME.npy and NAME.jpg for one image; returns their paths for the JSON report."""
    picture, maps = folder / f"{name}.jpg", folder / f"{name}.npy"
    write_maps(maps, item.grids, item.size, prep)
    heats = [upsample(grid, *item.size, prep, shown=item.shown.size) for grid in item.grids]
    captions = [f"{p['label']} {p['confidence'] * 100:.1f}%" for p in item.result["predictions"]]
    image = explanation_picture(item.shown, heats, captions)
    write_via_temp(picture, lambda tmp: image.save(tmp, format="JPEG", quality=JPEG_QUALITY),
                   durable=False, opened=True)
    return {"picture": str(picture), "maps": str(maps)}


class WriteAtOnce:
    """An executor that runs each task as it is submitted: writing files on a thread of its own only
    pays where a core is free (measured: docs/explain.md, "Measured")."""

    def __enter__(self) -> WriteAtOnce:
        return self

    def __exit__(self, *exc_info) -> None:
        return None

    def submit(self, task: Callable, *args) -> Future:
        done: Future = Future()
        done.set_result(task(*args))  # an error is raised here, in the caller, as it should
        return done


def writer_for(device: torch.device) -> ThreadPoolExecutor | WriteAtOnce:
    """A writer thread, so that a batch's pictures and maps are written while the next batch is
    explained (Pillow's encoder and NumPy release the GIL; at most two batches are held), where a
    GPU explains or the CPU has a core PyTorch does not use; else the files are written in turn."""
    if device.type != "cpu" or usable_cores() > torch.get_num_threads():
        return ThreadPoolExecutor(max_workers=1)
    return WriteAtOnce()


def explain_to_folder(
    loaded: LoadedModel, paths: list[Path], top_k: int, batch_size: int, method: str, folder: Path,
    min_confidence: float = 0.0,
) -> tuple[list[dict], list[tuple[str, str]]]:
    """predict.py --explain: the results of inference.predict.predict, each with an "explanation"
    entry naming its picture and maps in ``folder``; unreadable images as (path, reason)."""
    explainable(loaded)
    claim_folder(folder)
    names = output_names(paths)
    results, failures = [], []
    written: list[tuple[dict, Future]] = []  # the previous batch's files, being written

    def finish_writing() -> None:
        for result, files in written:
            result["explanation"] = files.result()  # a failed write raises here, in the caller
            results.append(result)
        progress.update(len(written))
        written.clear()

    with writer_for(loaded.device) as writer, \
            tqdm(total=len(paths), desc="explaining", unit="img", disable=None) as progress:
        for items, bad in explained_batches(loaded, paths, top_k, batch_size, method, min_confidence):
            finish_writing()
            failures += bad
            progress.update(len(bad))
            written.extend((item.result, writer.submit(write_explanation, folder, names[item.index], item,
                                                        loaded.prep)) for item in items)
        finish_writing()
    return results, failures
