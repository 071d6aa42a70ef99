"""A web page that classifies uploaded images with a trained checkpoint (Gradio).

    python app.py --model checkpoints/best          # then open http://127.0.0.1:7860

Upload one or several images: each is shown with its top-k labels as confidence bars.
    python app.py --review SUGGESTIONS.csv --labels-out LABELS.csv   # confirm or correct suggested labels
This file only reads the command line; the page is vitclassifier.inference.webapp.
"""
from __future__ import annotations

import importlib.util
import os
import sys

# Gradio reports usage and checks for new versions over the network unless told not to.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from vitclassifier.errors import UserError, report_user_error  # noqa: E402  (after the environment is set)
from vitclassifier.inference.options import AppConfig  # noqa: E402
from vitclassifier.options import build_parser  # noqa: E402

EXTRAS = "pip install -r requirements-extras.txt"


def parse_args(argv: list[str] | None = None) -> AppConfig:
    """AppConfig's options (vitclassifier/inference/options.py declares them), checked."""
    parser = build_parser("Serve a web page that classifies uploaded images.", AppConfig)
    config = AppConfig(**vars(parser.parse_args(argv)))
    problems = config.problems()
    if problems:
        parser.error("; ".join(problems))
    return config


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if importlib.util.find_spec("gradio") is None:
        print(f"error: the web page needs the gradio package: {EXTRAS}", file=sys.stderr)
        return 2
    try:
        if args.review:  # these import gradio: after the check above
            from vitclassifier.active.review import build_review_app
            app, extra = build_review_app(args.review, args.labels_out)
        else:
            from vitclassifier.inference.webapp import build_app
            app, extra = build_app(args.model, args.top_k, args.batch_size, args.device), {}
    except UserError as error:
        return report_user_error(error)
    try:
        # ssr_mode off: server-side rendering would need Node.js and adds nothing for this page. quiet:
        # Gradio's own start-up text speaks of its launch() arguments; ours names this command's options
        app.queue().launch(server_name=args.host, server_port=args.port, share=args.share, ssr_mode=False,
                           quiet=True, prevent_thread_lock=True, **extra)
    except OSError as error:  # the port is taken, or the address is not this machine's
        reason = str(error).split(". ")[0]  # Gradio goes on about its own launch() arguments
        print(
            f"error: cannot serve on {args.host}:{args.port}: {reason}; pick another --port", file=sys.stderr
        )
        return 2
    print(startup_text(args), flush=True)
    app.block_thread()  # until Ctrl+C
    return 0


def startup_text(args: AppConfig) -> str:
    """Where the page is, in this command's terms."""
    text = f"* Running on http://{args.host}:{args.port} (Ctrl+C stops it)"
    if not args.share:
        text += "\n* To create a public link as well, add --share"
    return text


if __name__ == "__main__":
    sys.exit(main())
