"""The web page of app.py (Gradio): upload images, see each one's top-k labels as confidence bars,
and, on request, where the model looked for its top class.

The model is loaded once; inference is inference.predict.predict, so the page agrees with predict.py,
and the heatmaps are predict.py --explain's (inference.explain). Unreadable uploads are listed in
the page; the others are still classified.
"""
from __future__ import annotations

import atexit
import html
import shutil
import tempfile
import uuid
from pathlib import Path

import numpy as np
from PIL import Image

from vitclassifier.devices import keep_freed_memory
from vitclassifier.export.files import is_export
from vitclassifier.inference.explain import explained_batches
from vitclassifier.inference.loading import load_for_prediction, prediction_device
from vitclassifier.inference.predict import predict
from vitclassifier.model.relevance import upsample
from vitclassifier.reporting.heatmaps import overlay

SHOW_MAPS = "Show where the model looked"


def failure_text(failures: list[tuple[str, str]], count: int) -> str:
    """HTML naming each unreadable upload and why. Names are text, never markup: escaped HTML, and not
    Markdown, where no escaping stops ``[x](http://...)`` or a bare address from becoming a link."""
    if not failures:
        return ""
    lines = "".join(
        f"<li><strong>{html.escape(Path(path).name)}</strong> could not be read: "
        f"{html.escape(reason.replace(path, Path(path).name))}</li>"
        for path, reason in failures
    )
    return f"<p><strong>{len(failures)} of {count} upload(s) failed</strong></p><ul>{lines}</ul>"


def bars_html(predictions: list[dict]) -> str:
    """The top-k labels as bars, each with its confidence to one decimal (names escaped)."""
    rows = []
    for rank, p in enumerate(predictions):
        percent = p["confidence"] * 100
        colour = "#2a7" if rank == 0 else "#9ab"
        rows.append(
            f'<div class="vit-row" style="margin:6px 0">'
            f'<div style="display:flex;justify-content:space-between">'
            f'<span class="vit-label">{html.escape(p["label"])}</span>'
            f'<span class="vit-confidence">{percent:.1f}%</span></div>'
            f'<div style="background:#eee;height:10px;border-radius:4px"><div style="background:{colour};'
            f'width:{percent:.1f}%;height:10px;border-radius:4px"></div></div></div>'
        )
    return f'<div class="vit-bars">{"".join(rows)}</div>'


def label_set_html(result: dict) -> str:
    """A model of several labels per image: every label at or above its threshold, or none (escaped)."""
    if "labels" not in result:
        return ""
    found = ", ".join(f"{html.escape(name)} {p * 100:.1f}%" for name, p in result["labels"].items())
    return f'<p class="vit-labels"><strong>Labels:</strong> {found or "none"}</p>'


def uploaded_path(file: str | dict) -> str:
    """An upload's path on the server: Gradio hands its file records over unprocessed (below)."""
    return file["path"] if isinstance(file, dict) else file


def capped(top_k: object, classes: int) -> int:
    """--top-k as predict.py takes it: at least 1, at most the number of classes."""
    try:
        return min(max(1, int(float(top_k))), classes)
    except (TypeError, ValueError):
        return 1


def make_classify(model_dir: Path, device_name: str, batch_size: int):
    """Load the model once; return its labels, whether it can show maps, and
    classify(files, top_k, show_maps) -> (results, errors).

    ``results`` lists {"name", "image" (its path), "predictions": [{"label", "confidence"}]} in upload
    order, as predict.predict gives them, and with ``show_maps`` a "heatmap" picture of where the
    model looked for the top class; ``errors`` is HTML naming each unreadable upload and why."""
    keep_freed_memory()  # as predict.py: no page faults for every upload's activations
    # predict.py's defaults (bf16 where supported), its calibrated confidences and its exports
    loaded = load_for_prediction(model_dir, prediction_device(model_dir, device_name))
    can_explain = not is_export(model_dir)  # exports have no gradients
    heatmaps = Path(tempfile.mkdtemp(prefix="vitclassifier-heatmaps-"))
    atexit.register(shutil.rmtree, heatmaps, ignore_errors=True)  # our own folder, gone with the server

    def explained(paths: list[Path], top_k: int) -> tuple[list[dict], list[tuple[str, str]]]:
        results, failures = [], []
        for items, bad in explained_batches(loaded, paths, top_k, batch_size, "relevance"):
            failures += bad
            for item in items:
                heat = upsample(item.grids[0], *item.size, loaded.prep, shown=item.shown.size)
                picture = heatmaps / f"{uuid.uuid4().hex}.png"
                Image.fromarray(overlay(np.asarray(item.shown.convert("RGB")), heat)).save(picture)
                results.append({**item.result, "heatmap": str(picture)})
        return results, failures

    def classify(files: list | None, top_k: float, show_maps: bool = False) -> tuple[list[dict], str]:
        paths, k = [Path(uploaded_path(file)) for file in files or []], capped(top_k, len(loaded.labels))
        if show_maps and can_explain:
            results, failures = explained(paths, k)
        else:
            results, failures = predict(loaded, paths, k, batch_size)
        # No "path" key: Gradio takes a dict with one for a file to send, and would replace it.
        shown = [{"name": Path(r["path"]).name, "image": r["path"], "predictions": r["predictions"],
                  **({"heatmap": r["heatmap"]} if "heatmap" in r else {}),
                  **({"labels": r["label_confidences"]} if "labels" in r else {})} for r in results]
        return shown, failure_text(failures, len(results) + len(failures))

    return loaded.labels, can_explain, classify


def build_app(model_dir: Path, top_k: int = 3, batch_size: int = 32, device: str = "auto"):
    """The page: an upload box, a top-k slider and (for a checkpoint) a "show where the model looked"
    box in, one row per image (picture, heatmap, bars) out. The API endpoint /classify returns the
    results as JSON and the error text."""
    labels, can_explain, classify = make_classify(model_dir, device, batch_size)  # a bad --model fails fast
    import gradio as gr

    with gr.Blocks(title="ViT image classifier") as app:
        gr.Markdown("## ViT image classifier")
        gr.HTML(  # names from the model file are text, never markup (escaped, and not Markdown)
            f"<p><code>{html.escape(str(model_dir))}</code>: {len(labels)} classes "
            f"({html.escape(', '.join(labels[:10]))}{', …' if len(labels) > 10 else ''}). "
            f"Upload one or several images.</p>",
            elem_id="model-info",
        )
        with gr.Row():
            files = gr.File(file_count="multiple", file_types=["image"], label="Images", scale=3)
            # Gradio wants maximum > minimum: a one-class model's slider goes to 2, capped to 1
            k = gr.Slider(1, max(2, len(labels)), value=min(top_k, len(labels)), step=1, label="Top-k labels",
                          scale=1)
        inputs, events = [files, k], [files.change, k.release]
        if can_explain:
            show_maps = gr.Checkbox(False, label=SHOW_MAPS, elem_id="show-maps",
                                    info="the top class's heatmap (docs/explain.md)")
            inputs, events = inputs + [show_maps], events + [show_maps.change]
        errors = gr.HTML(elem_id="errors")  # names as text (failure_text), never Markdown
        results = gr.JSON(label="results", render=False)  # placed at the end of the page, below the rows
        # preprocess=False: the slider would refuse an API call's top-k above the class count (an error
        # in the page and a traceback in the server log); classify caps it, as predict.py does. The
        # uploads are still checked to be Gradio's own files before classify sees them.
        gr.on(events, classify, inputs=inputs, outputs=[results, errors], api_name="classify",
              preprocess=False)

        @gr.render(inputs=results)
        def show(shown: list[dict] | None) -> None:
            for result in shown or []:
                with gr.Row(equal_height=True):
                    gr.Image(result["image"], label=result["name"], height=224, scale=1, buttons=[])
                    if result.get("heatmap"):
                        top = result["predictions"][0]["label"]
                        gr.Image(result["heatmap"], label=f"where it looked for {top}", height=224, scale=1,
                                 buttons=[], elem_classes="vit-heatmap")
                    gr.HTML(label_set_html(result) + bars_html(result["predictions"]), scale=2, padding=True)

        with gr.Accordion("Results as JSON", open=False):
            results.render()
    return app
