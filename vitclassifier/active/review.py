"""``app.py --review suggestions.csv --labels-out labels.csv``: the review page (Gradio).

It shows the suggested images one at a time, in the order they were suggested, with the model's
suggestion marked. One click (or key) answers: Enter or the marked button confirms the suggestion,
a class's button or its number key (1-9, then 0 for the tenth) gives that class. Each answer is
saved at once into the label file (answers.py: locked, appended and fsync'd), so closing the page,
or the server, loses nothing, and the page starts again at the first image not yet answered, in
this tab or any other. No model is loaded: the suggestions carry the model's answers.
"""
from __future__ import annotations

import csv
import html
import json
from pathlib import Path
from typing import NamedTuple

from vitclassifier import tables
from vitclassifier.active.answers import ensure_folder, read_answers, relative_name, save_answer
from vitclassifier.errors import UserError
from vitclassifier.files import check_output_file
from vitclassifier.text import printable

KEYS = "1234567890"  # the shortcut of the first ten classes' buttons
SHORTCUTS = """<script>
document.addEventListener("keydown", (event) => {
  if (event.ctrlKey || event.metaKey || event.altKey || event.repeat) return;
  if (event.target.closest && event.target.closest("input, textarea, select")) return;
  const keys = "KEYS";
  const id = event.key === "Enter" ? "review-confirm"
    : keys.includes(event.key) && event.key !== "" ? "review-class-" + keys.indexOf(event.key) : null;
  const button = id && document.getElementById(id);
  if (button) { event.preventDefault(); button.click(); }
});
</script>""".replace("KEYS", KEYS)


class Suggestion(NamedTuple):
    image: Path
    label: str
    confidence: str
    why: str


def read_suggestions(path: Path) -> tuple[list[Suggestion], list[str]]:
    """The suggestions of --suggest-labels' CSV (paths relative to its folder) and the classes to
    choose from (suggestions.json's, else every suggested label)."""
    try:
        with open(path, encoding="utf-8", newline="") as handle:
            rows = [{key: tables.original_cell(value or "") for key, value in row.items()}
                    for row in csv.DictReader(handle)]
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise UserError(f"--review {printable(path)}: cannot read it ({printable(error)})") from None
    if not rows or not {"path", "suggested_label"} <= set(rows[0]):
        raise UserError(f"--review {printable(path)} is not a suggestions.csv written by classifier.py "
                        f"--suggest-labels (it needs the columns path and suggested_label)")
    found = [Suggestion(path.parent / row["path"], row["suggested_label"], row.get("confidence", ""),
                        row.get("why", "")) for row in rows if row["path"]]
    facts = path.with_suffix(".json")
    try:
        classes = [str(name) for name in json.loads(facts.read_text(encoding="utf-8"))["classes"]]
    except (OSError, ValueError, KeyError, TypeError):
        classes = sorted({item.label for item in found})
    return found, classes


def check_labels_out(labels_out: Path, suggestions: list[Suggestion]) -> None:
    """Before serving: the label file can be written, is ours (or new), and lies where train.py finds
    the images (it reads only images inside the label file's folder)."""
    check_output_file(labels_out, "--labels-out")
    read_answers(labels_out)  # refuses a file with other columns
    outside = [item.image for item in suggestions if relative_name(item.image, labels_out).startswith("../")]
    if outside:
        raise UserError(f"--labels-out {printable(labels_out)}: train.py reads only images inside the label "
                        f"file's folder, and {printable(outside[0])} is not; put the label file in a folder "
                        f"above the images (e.g. beside the pool folder's images)")
    ensure_folder(labels_out)


def next_open(suggestions: list[Suggestion], labels_out: Path) -> tuple[int, int]:
    """(position of the first suggestion not answered yet, or -1; how many are answered)."""
    answers = read_answers(labels_out)
    done = [relative_name(item.image, labels_out) in answers for item in suggestions]
    return (done.index(False) if not all(done) else -1), sum(done)


def status_html(suggestions: list[Suggestion], position: int, answered: int, labels_out: Path) -> str:
    """The line above the image: progress, or what to do once every suggestion is answered."""
    where = html.escape(str(labels_out))
    if position < 0:
        return (f'<p id="review-status">All {len(suggestions)} suggestions answered, saved in <code>{where}'
                f'</code>. Train with: <code>python train.py --data {where}</code></p>')
    item = suggestions[position]
    return (f'<p id="review-status">{answered} of {len(suggestions)} answered (saved in <code>{where}'
            f'</code>). <strong>{html.escape(item.image.name)}</strong>: the model suggests '
            f'<strong id="review-suggestion">{html.escape(item.label)}</strong> '
            f'({html.escape(percent(item.confidence))})'
            f'<br><small>{html.escape(item.why)}</small></p>')


def percent(confidence: str) -> str:
    """A confidence from the CSV file as a percentage ("0.4073" -> "41%"); other text as it is."""
    try:
        return f"{float(confidence) * 100:.0f}%"
    except ValueError:
        return confidence


def build_review_app(review: Path, labels_out: Path):
    """The page and the launch() arguments it needs (the images' folders, the shortcuts' script)."""
    suggestions, classes = read_suggestions(Path(review))
    check_labels_out(Path(labels_out), suggestions)
    import gradio as gr

    def show(position: int) -> list:
        position, answered = next_open(suggestions, labels_out)
        item = suggestions[position] if position >= 0 else None
        buttons = [gr.update(variant="primary" if item and name == item.label else "secondary",
                             interactive=item is not None) for name in classes]
        return [position, status_html(suggestions, position, answered, labels_out),
                str(item.image) if item else None, gr.update(interactive=item is not None), *buttons]

    def answer(position: int, label: str | None) -> list:
        if position is not None and position >= 0:
            save_answer(labels_out, suggestions[position].image, label or suggestions[position].label)
        return show(position)

    with gr.Blocks(title="Review suggested labels") as app:
        gr.Markdown("## Review suggested labels")
        current = gr.State(-1)
        status = gr.HTML(elem_id="review-status-box")
        image = gr.Image(type="filepath", height=320, interactive=False, buttons=[], label="image")
        confirm = gr.Button("Confirm the suggestion (Enter)", elem_id="review-confirm", variant="primary")
        with gr.Row():
            buttons = [gr.Button(f"{KEYS[i]} · {name}" if i < len(KEYS) else name,
                                 elem_id=f"review-class-{i}", elem_classes="review-class")
                       for i, name in enumerate(classes)]
        outputs = [current, status, image, confirm, *buttons]
        app.load(show, inputs=[current], outputs=outputs)
        confirm.click(lambda position: answer(position, None), inputs=[current], outputs=outputs)
        for name, button in zip(classes, buttons):
            button.click(lambda position, name=name: answer(position, name), inputs=[current],
                         outputs=outputs)
    folders = sorted({str(item.image.parent.absolute()) for item in suggestions})
    return app, {"allowed_paths": folders, "head": SHORTCUTS}
