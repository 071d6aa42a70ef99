"""The web page of app.py (Gradio): upload images, see each one's top-k labels as confidence bars.

The model is loaded once; inference is inference.predict.predict, so the page agrees with predict.py.
Unreadable uploads are listed in the page; the others are still classified.
"""
from __future__ import annotations

import html
from pathlib import Path

from vitclassifier.devices import keep_freed_memory
from vitclassifier.inference.loading import load_for_prediction, prediction_device
from vitclassifier.inference.predict import predict


def make_classify(model_dir: Path, device_name: str, batch_size: int):
    """Load the model once; return its labels and classify(files, top_k) -> (results, errors).

    ``results`` lists {"name", "image" (its path), "predictions": [{"label", "confidence"}]} in upload
    order, as predict.predict gives them; ``errors`` is Markdown naming each unreadable upload and why."""
    keep_freed_memory()  # as predict.py: no page faults for every upload's activations
    # predict.py's defaults (bf16 where supported), its calibrated confidences and its exports
    loaded = load_for_prediction(model_dir, prediction_device(model_dir, device_name))

    def classify(files: list[str] | None, top_k: float) -> tuple[list[dict], str]:
        results, failures = predict(loaded, [Path(file) for file in files or []], int(top_k), batch_size)
        # No "path" key: Gradio takes a dict with one for a file to send, and would replace it.
        shown = [{"name": Path(r["path"]).name, "image": r["path"], "predictions": r["predictions"]}
                 for r in results]
        if not failures:
            return shown, ""
        lines = "\n".join(
            f"- **{html.escape(Path(path).name, quote=False)}** could not be read: "
            f"{html.escape(reason.replace(path, Path(path).name), quote=False)}"  # no tags from file names
            for path, reason in failures
        )
        return shown, f"**{len(failures)} of {len(results) + len(failures)} upload(s) failed**\n\n{lines}"

    return loaded.labels, classify


def build_app(model_dir: Path, top_k: int = 3, batch_size: int = 32, device: str = "auto"):
    """The page: an upload box and a top-k slider in, one row per image (picture + bars) out.
    The API endpoint /classify returns the results as JSON and the error text."""
    labels, classify = make_classify(model_dir, device, batch_size)  # first: a bad --model fails fast
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
            k = gr.Slider(
                1, len(labels), value=min(top_k, len(labels)), step=1, label="Top-k labels", scale=1
            )
        errors = gr.Markdown(elem_id="errors")
        results = gr.JSON(label="results", render=False)  # placed at the end of the page, below the rows
        gr.on(
            [files.change, k.release],
            classify,
            inputs=[files, k],
            outputs=[results, errors],
            api_name="classify",
        )

        @gr.render(inputs=results)
        def show(shown: list[dict] | None) -> None:
            for result in shown or []:
                with gr.Row(equal_height=True):
                    gr.Image(result["image"], label=result["name"], height=224, scale=1, buttons=[])
                    gr.Label(
                        {p["label"]: p["confidence"] for p in result["predictions"]},
                        num_top_classes=len(result["predictions"]),
                        label="Top labels",
                        scale=2,
                    )

        with gr.Accordion("Results as JSON", open=False):
            results.render()
    return app
