"""A web page that classifies uploaded images with a trained checkpoint (Gradio).

    python app.py --model checkpoints/best          # then open http://127.0.0.1:7860

Upload one or several images: each is shown with its top-k labels as confidence bars. The model
is loaded once at start; inference is predict.predict, so the page agrees with predict.py.
Unreadable uploads are listed in the page; the others are still classified.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from pathlib import Path

# Gradio reports usage and checks for new versions over the network unless told not to.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from classifier import HelpFormatter, UserError  # noqa: E402  (after the environment is set)

EXTRAS = "pip install -r requirements-extras.txt"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Serve a web page that classifies uploaded images.",
                                formatter_class=HelpFormatter)
    p.add_argument("--model", type=Path, default=Path("checkpoints/best"),
                   help="checkpoint directory, or an .onnx or .xml model made by export.py")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on; 0.0.0.0 makes the page reachable from other machines")
    p.add_argument("--port", type=int, default=7860, help="port to listen on")
    p.add_argument("--share", action="store_true",
                   help="also publish the page through a temporary public gradio.live link")
    p.add_argument("--top-k", type=int, default=3, help="labels shown per image at first (a slider changes it)")
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"], help="where to run")
    args = p.parse_args(argv)
    if args.top_k < 1 or args.batch_size < 1:
        p.error("--top-k and --batch-size must be at least 1")
    if not 0 < args.port < 65536:
        p.error("--port must be from 1 to 65535")
    return args


def make_classify(model_dir: Path, device_name: str, batch_size: int):
    """Load the model once; return its labels and classify(files, top_k) -> (results, errors).

    ``results`` lists {"name", "image" (its path), "predictions": [{"label", "confidence"}]} in upload
    order, as predict.predict gives them; ``errors`` is Markdown naming each unreadable upload and why."""
    from devices import keep_freed_memory
    from predict import load_for_prediction, predict, prediction_device

    keep_freed_memory()  # as predict.py: no page faults for every upload's activations
    device = prediction_device(model_dir, device_name)
    # predict.py's defaults (bf16 where supported), its calibrated confidences and its exports
    model, prep, labels, temperature, dtype = load_for_prediction(model_dir, device)

    def classify(files: list[str] | None, top_k: float) -> tuple[list[dict], str]:
        results, failures = predict(model, prep, labels, [Path(file) for file in files or []], int(top_k),
                                    batch_size, device, temperature, dtype=dtype)
        # No "path" key: Gradio takes a dict with one for a file to send, and would replace it.
        shown = [{"name": Path(r["path"]).name, "image": r["path"], "predictions": r["predictions"]}
                 for r in results]
        if not failures:
            return shown, ""
        lines = "\n".join(f"- **{Path(path).name}** could not be read: {reason.replace(path, Path(path).name)}"
                          for path, reason in failures)
        return shown, f"**{len(failures)} of {len(results) + len(failures)} upload(s) failed**\n\n{lines}"
    return labels, classify


def build_app(model_dir: Path, top_k: int = 3, batch_size: int = 32, device: str = "auto"):
    """The page: an upload box and a top-k slider in, one row per image (picture + bars) out.
    The API endpoint /classify returns the results as JSON and the error text."""
    labels, classify = make_classify(model_dir, device, batch_size)  # first: a bad --model fails fast
    import gradio as gr

    with gr.Blocks(title="ViT image classifier") as app:
        gr.Markdown(f"## ViT image classifier\n`{model_dir}`: {len(labels)} classes ({', '.join(labels[:10])}"
                    f"{', …' if len(labels) > 10 else ''}). Upload one or several images.")
        with gr.Row():
            files = gr.File(file_count="multiple", file_types=["image"], label="Images", scale=3)
            k = gr.Slider(1, len(labels), value=min(top_k, len(labels)), step=1, label="Top-k labels", scale=1)
        errors = gr.Markdown(elem_id="errors")
        results = gr.JSON(label="results", render=False)  # placed at the end of the page, below the rows
        gr.on([files.change, k.release], classify, inputs=[files, k], outputs=[results, errors],
              api_name="classify")

        @gr.render(inputs=results)
        def show(shown: list[dict] | None) -> None:
            for result in shown or []:
                with gr.Row(equal_height=True):
                    gr.Image(result["image"], label=result["name"], height=224, scale=1, buttons=[])
                    gr.Label({p["label"]: p["confidence"] for p in result["predictions"]},
                             num_top_classes=len(result["predictions"]), label="Top labels", scale=2)

        with gr.Accordion("Results as JSON", open=False):
            results.render()
    return app


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if importlib.util.find_spec("gradio") is None:
        print(f"error: the web page needs the gradio package: {EXTRAS}", file=sys.stderr)
        return 2
    try:
        app = build_app(args.model, args.top_k, args.batch_size, args.device)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        # ssr_mode off: server-side rendering would need Node.js and adds nothing for this page
        app.queue().launch(server_name=args.host, server_port=args.port, share=args.share, ssr_mode=False)
    except OSError as error:  # the port is taken, or the address is not this machine's
        reason = str(error).split(". ")[0]  # Gradio goes on about its own launch() arguments
        print(f"error: cannot serve on {args.host}:{args.port}: {reason}; pick another --port", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
