"""best/README.md (reporting/model_card.py): a Hugging Face model card whose numbers are training_info.json's,
which huggingface_hub reads, and in which hostile class names render as plain text."""
from __future__ import annotations

import json
import re

import pytest

from vitclassifier.reporting.model_card import text, write_model_card

HOSTILE = ["<script>alert(1)</script>", "**bold** [link](http://evil.example)", "red\x1b[31m\x07bell",
           "two\nlines", "key: value\n---\nlibrary_name: evil", "pipe | cell", "<img src=x onerror=alert(1)>",
           "`code` & &amp; \\ back", "\u202eevil"]
CONFUSION = [[8, 1, 0, 0, 0, 0, 0, 0, 0], [0, 9, 0, 0, 0, 0, 0, 0, 1], [0, 0, 7, 2, 0, 0, 0, 0, 0],
             [0, 0, 1, 8, 0, 0, 0, 0, 0], [0, 0, 0, 0, 9, 0, 0, 0, 0], [0, 0, 0, 0, 0, 6, 0, 0, 0],
             [0, 0, 0, 0, 0, 0, 4, 0, 0], [0, 0, 0, 0, 3, 0, 0, 5, 0], [0, 0, 0, 0, 0, 0, 0, 0, 9]]


def training_info() -> dict:
    """A training_info.json as checkpoint.save_model and report_run write it, plus the recipe's decisions
    (and the Hub id report_run passes along for a preset)."""
    hits = sum(CONFUSION[i][i] for i in range(len(CONFUSION)))
    count = sum(map(sum, CONFUSION))
    return {"epoch": 6, "score": [hits / count, -0.41], "select_by": "accuracy", "weights": "raw",
            "val_acc": hits / count, "val_loss": 0.4123, "val_macro_f1": 0.8437, "labels": HOSTILE,
            "model": "vit-tiny", "hub_id": "facebook/deit-tiny-patch16-224", "pretrained": True,
            "data": {"form": "folder", "data": "/home/me/private/set"},
            "train_images": 240, "val_images": count, "temperature": 1.0, "temperature_fitted": 1.31,
            "temperature_range": [1.1, 1.5], "ece_before": 0.091, "ece_after": 0.034,
            "calibration": "temperature 1.310, fitted on the 80 validation images",
            "temperature_folded": 1.31,
            "recipe": {"recipe": "auto", "decisions": [
                {"option": "lr", "value": 0.0003, "reason": "LR range test: steepest fall at 3e-4"},
                {"option": "flip", "value": "off", "reason": "flipped images score worse <b>"}]}}


@pytest.fixture
def card(tmp_path):
    best = tmp_path / "my-run" / "best"
    best.mkdir(parents=True)
    info = training_info()
    (best / "training_info.json").write_text(json.dumps(info))
    audit = {"classes": {name: {"train": 20 + i, "val": sum(CONFUSION[i]), "total": 0}
                         for i, name in enumerate(HOSTILE)},
             "fatal": [], "recommendations": ["images filed under two classes teach contradictory labels"]}
    return write_model_card(best, json.loads((best / "training_info.json").read_text()), CONFUSION, audit)


def test_the_card_loads_with_huggingface_hub_and_its_metrics_are_training_info_s(card):
    from huggingface_hub import ModelCard
    info = json.loads((card.parent / "training_info.json").read_text())
    loaded = ModelCard.load(card)
    data = loaded.data.to_dict()
    assert data["library_name"] == "transformers" and data["pipeline_tag"] == "image-classification"
    assert data["base_model"] == "facebook/deit-tiny-patch16-224"  # the preset's Hub id
    accuracy = next(r for r in loaded.data.eval_results if r.metric_type == "accuracy")
    assert accuracy.metric_value == round(info["val_acc"], 4)
    assert accuracy.task_type == "image-classification"
    f1 = next(r for r in loaded.data.eval_results if r.metric_type == "f1")
    assert f1.metric_value == round(info["val_macro_f1"], 4)
    assert "library_name: evil" not in card.read_text().split("---\n")[1]  # no name reached the header


def test_the_body_gives_the_measured_figures(card):
    body = card.read_text()
    info = training_info()
    assert f"{info['val_acc']:.0%} (95% CI" in body and f"on {info['val_images']} images" in body
    assert "Macro-F1: 84% (95% CI" in body
    assert "9.1% before, 3.4% after" in body and "Temperature: 1.310" in body
    assert "| 0.0003 |" in body and "LR range test" in body  # the recipe's decisions with their reasons
    assert "contradictory labels" in body  # the audit's finding
    assert "| 0.875 | 0.778 | 0.824 | 9 |" in body  # class 2: precision 7/8, recall 7/9, 9 images
    assert "/home/me" not in body and "set" in body  # only the data folder's own name
    pairs = body.split("## Most confused classes")[1]
    assert pairs.index(text(HOSTILE[7])) < pairs.index(text(HOSTILE[2]))  # 3 images before 2


def test_hostile_names_render_as_plain_text(card):
    markdown_it = pytest.importorskip("markdown_it")
    raw = card.read_text()
    assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f\u202e]", raw)  # no terminal codes, no bidi override
    html = markdown_it.MarkdownIt("commonmark").enable("table").render(raw.split("---\n", 2)[2])
    assert "<script" not in html and "<img" not in html and "<strong>" not in html and "<code>" not in html
    assert 'href="http://evil.example"' not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html  # shown, as text
    assert "**bold** [link](http://evil.example)" in html
    assert "pipe | cell" in html  # the pipe did not split the table's cell
    tables = html.split("<table>")[1:]
    assert len(tables) == 4  # data, recipe, per class, confused pairs: no name broke one
    for table in tables:
        head = len(re.findall(r"<th[ >]", table))
        rows = [len(re.findall(r"<td[ >]", row)) for row in table.split("<tbody>")[1].split("<tr>")[1:]]
        assert rows and set(rows) == {head}  # no name added or removed a cell
    assert html.count("two\\nlines") == 6  # one line each, where a class is named


def test_unmeasured_sections_say_so_and_claim_nothing(tmp_path):
    from huggingface_hub import ModelCard
    card = write_model_card(tmp_path, {"labels": ["a", "b"], "model": "/some/local/model"})
    body = card.read_text()
    assert "## Validation\n\nNot measured." in body and "## Calibration\n\nNot measured." in body
    assert "not recorded" in body and "Per class" not in body
    data = ModelCard.load(card).data.to_dict()
    assert "base_model" not in data and "model-index" not in data  # no pre-training claimed, no metric


def test_random_weights_name_no_base_model(tmp_path):
    from huggingface_hub import ModelCard
    card = write_model_card(tmp_path, {"labels": ["a", "b"], "model": "vit-tiny", "pretrained": False,
                                       "val_acc": 0.5, "val_images": 4}, [[1, 1], [1, 1]])
    assert "base_model" not in ModelCard.load(card).data.to_dict()
    assert "Trained from random weights" in card.read_text()
