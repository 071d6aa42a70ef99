"""Prediction with a model of several labels per image: predict.py gives every label at or above its
fitted threshold, as transformers.pipeline's sigmoid scores say, --threshold overrides them, an ONNX
export gives the same sets, and --evaluate scores a labelled multi-label file."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import export
import predict
import train


def _sets(report: dict) -> dict[str, list[str]]:
    return {Path(r["path"]).name: sorted(r["labels"]) for r in report["results"]}


def _predict(model: Path, images: list[Path], capsys, *extra: str) -> dict:
    capsys.readouterr()
    assert predict.main(["--model", str(model), "--image", *map(str, images), "--json", "-", *extra]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.slow
def test_predict_pipeline_and_onnx_give_the_same_sets(multi_label_run, tmp_path: Path, capsys) -> None:
    from transformers import pipeline
    labels_file, run = multi_label_run
    best = run / "best"
    images = sorted((labels_file.parent / "scenes").glob("*.jpg"))[:8]
    thresholds = json.loads((best / "training_info.json").read_text())["thresholds"]
    report = _predict(best, images, capsys)
    classify = pipeline("image-classification", model=str(best), device="cpu")
    expected = {image.name: sorted(r["label"] for r in classify(str(image), top_k=3)
                                   if r["score"] >= thresholds[r["label"]]) for image in images}
    assert _sets(report) == expected
    for result in report["results"]:
        assert result["label"] == (", ".join(result["labels"]) or "none")
        assert all(result["label_confidences"][n] >= thresholds[n] for n in result["labels"])
    every = _predict(best, images, capsys, "--threshold", "0")
    assert all(len(r["labels"]) == 3 for r in every["results"])
    nothing = _predict(best, images, capsys, "--threshold", "1", "--top-k", "1")
    assert all(r["labels"] == [] and r["label"] == "none" for r in nothing["results"])
    onnx = tmp_path / "model.onnx"
    assert export.main(["--model", str(best), "--format", "onnx", "--out", str(onnx), "--bench-rounds", "1",
                        "--check-images", str(images[0].parent)]) == 0
    meta = json.loads((tmp_path / "model.onnx.json").read_text())
    assert meta["problem_type"] == "multi_label_classification" and meta["thresholds"] == thresholds
    assert _sets(_predict(onnx, images, capsys)) == expected


@pytest.mark.slow
def test_evaluate_scores_a_multi_label_file(multi_label_run, tmp_path: Path, capsys) -> None:
    labels_file, run = multi_label_run
    capsys.readouterr()
    assert train.main(["--evaluate", "--model", str(run / "best"), "--data", str(labels_file),
                       "--output-dir", str(tmp_path / "ev")]) == 0
    said = capsys.readouterr().out
    assert "mAP" in said and "exact match" in said
    assert (tmp_path / "ev" / "per_class.csv").read_text().startswith("class,ap,")
    assert (tmp_path / "ev" / "pr_curves.png").is_file()


def test_threshold_is_refused_for_one_class_per_image(tiny_vit: Path, tmp_path: Path, capsys) -> None:
    from PIL import Image
    Image.new("RGB", (32, 32)).save(tmp_path / "a.png")
    argv = ["--model", str(tiny_vit), "--image", str(tmp_path / "a.png"), "--threshold", "0.3"]
    assert predict.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--threshold is for a model of several labels" in err[0]


def test_the_web_page_shows_the_set() -> None:
    from vitclassifier.inference.webapp import label_set_html
    shown = label_set_html({"labels": {"<cat>": 0.91, "dog": 0.5}})
    assert "&lt;cat&gt; 91.0%" in shown and "dog 50.0%" in shown
    assert "none" in label_set_html({"labels": {}}) and label_set_html({"predictions": []}) == ""


@pytest.mark.slow
def test_what_out_and_data_cannot_do_yet_is_refused_in_one_line(multi_label_run, trained_run, tmp_path: Path,
                                                               capsys) -> None:
    labels_file, run = multi_label_run
    images = sorted((labels_file.parent / "scenes").glob("*.jpg"))[:2]
    out = tmp_path / "rows.jsonl"
    cases = [
        (["--model", str(run / "best"), "--image", *map(str, images), "--out", str(out)], "several labels"),
        (["--model", str(trained_run / "best"), "--data", str(labels_file), "--out", str(out)],
         "several labels per image: --data takes one class"),
        (["--model", str(trained_run / "best"), "--image", str(images[0]), "--out", str(out), "--threshold",
          "0.5"], "--threshold works with --image"),
    ]
    for argv, words in cases:
        capsys.readouterr()
        assert predict.main(argv) == 2
        err = capsys.readouterr().err
        assert words in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        assert not out.exists()
    capsys.readouterr()
    assert train.main(["--lr-find", "--data", str(labels_file), "--model", str(run / "best"),
                       "--output-dir", str(tmp_path / "lr")]) == 2
    assert "--lr-find measures one class per image" in capsys.readouterr().err
