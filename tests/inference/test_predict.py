"""predict.py: inputs of every kind, top-k, JSON, pictures, bad files, calibrated confidences,
--min-confidence and --tta, agreement with transformers, exports run, outputs and bad options
refused up front."""
from __future__ import annotations

import io
import json
import shutil

import pytest
import torch
from helpers import CLASSES, confidences, must_not_load, one_error_line, write_small_images
from PIL import Image

import predict
from vitclassifier.inference.predict import print_table, ranked, top_k_results, tta_views
from vitclassifier.model.checkpoint import update_info
from vitclassifier.text import shell_word


@pytest.fixture(scope="module")
def images(pattern_data, tmp_path_factory):
    """Six generated images in a folder of their own (two per class)."""
    folder = tmp_path_factory.mktemp("to-predict")
    for name in CLASSES:
        for i in range(2):
            Image.open(pattern_data / name / f"{name}_{i:03d}.png").save(folder / f"{name}{i}.jpg")
    return folder


def test_bad_prediction_options_are_refused_up_front(capsys):
    for argv in (["--image", "x.jpg", "--top-k", "0"], ["--image", "x.jpg", "--batch-size", "0"]):
        with pytest.raises(SystemExit):
            predict.parse_args(argv)
    assert "--top-k must be at least 1" in capsys.readouterr().err


def run(capsys, *argv):
    code = predict.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.slow
def test_single_image_prints_top_k_with_confidences(trained_run, images, capsys):
    code, out, _ = run(capsys, "--model", str(trained_run / "best"),
                       "--image", str(images / "horizontal0.jpg"), "--top-k", "2")
    lines = out.strip().splitlines()
    assert code == 0 and lines[0].endswith("horizontal0.jpg")
    assert len(lines) == 3 and lines[1].lstrip().startswith("1.") and lines[2].lstrip().startswith("2.")
    assert all("%" in line for line in lines[1:])


@pytest.mark.slow
def test_several_files_a_folder_and_a_glob_with_json(trained_run, images, tmp_path, capsys):
    report = tmp_path / "out.json"
    code, _, _ = run(capsys, "--model", str(trained_run / "best"), "--image", str(images / "horizontal0.jpg"),
                     str(images / "vertical1.jpg"), "--json", str(report), "--batch-size", "1")
    data = json.loads(report.read_text())
    assert code == 0 and [r["path"] for r in data["results"]] == [str(images / "horizontal0.jpg"),
                                                                  str(images / "vertical1.jpg")]
    code, _, _ = run(capsys, "--model", str(trained_run / "best"), "--image", str(images),
                     "--json", str(report))
    assert code == 0 and len(json.loads(report.read_text())["results"]) == 6
    code, out, _ = run(capsys, "--model", str(trained_run / "best"), "--image", str(images / "plain*.jpg"),
                       "--json", "-")
    data = json.loads(out)
    assert code == 0 and len(data["results"]) == 2 and data["errors"] == []
    for result in data["results"]:
        confidences = [p["confidence"] for p in result["predictions"]]
        assert len(confidences) == 3 and confidences == sorted(confidences, reverse=True)
        assert 0.99 <= sum(confidences) <= 1.01  # 3 classes, top-3: all of the probability


@pytest.mark.slow
def test_top_k_above_the_class_count_is_capped(trained_run, images, capsys):
    code, out, err = run(capsys, "--model", str(trained_run / "best"),
                         "--image", str(images / "vertical0.jpg"), "--top-k", "10")
    assert code == 0 and "capped" in err and len(out.strip().splitlines()) == 4


@pytest.mark.slow
def test_bad_files_are_reported_and_the_good_ones_still_predicted(trained_run, images, tmp_path, capsys):
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.png").write_text("this is not a picture")
    good = images / "horizontal1.jpg"
    code, out, err = run(capsys, "--model", str(trained_run / "best"), "--image", str(tmp_path / "empty.jpg"),
                         str(good), str(tmp_path / "text.png"), str(tmp_path / "missing.jpg"), "--json", "-")
    data = json.loads(out)
    assert code == 1
    assert [r["path"] for r in data["results"]] == [str(good)]
    assert {e["path"] for e in data["errors"]} == {str(tmp_path / n)
                                                   for n in ("empty.jpg", "text.png", "missing.jpg")}
    for name in ("empty.jpg", "text.png", "missing.jpg"):
        assert name in err


@pytest.mark.slow
def test_visualize_writes_a_picture(trained_run, images, tmp_path, capsys):
    picture = tmp_path / "grid.png"
    code, _, _ = run(capsys, "--model", str(trained_run / "best"), "--image", str(images),
                     "--visualize", str(picture))
    assert code == 0
    with Image.open(picture) as image:
        assert image.format == "PNG" and image.width >= 600 and image.height >= 6 * 150


@pytest.mark.slow
def test_missing_checkpoint_is_a_clear_error(tmp_path, images, capsys):
    code, _, err = run(capsys, "--model", str(tmp_path / "nothing"), "--image", str(images))
    assert code == 2 and "not a trained checkpoint" in err


@pytest.mark.slow
def test_transformers_pipeline_loads_the_checkpoint_and_agrees(trained_run, pattern_data, capsys):
    from transformers import pipeline
    paths = [str(p) for name in CLASSES for p in sorted((pattern_data / name).iterdir())[:5]]
    classify = pipeline("image-classification", model=str(trained_run / "best"), device="cpu")
    theirs = [result[0]["label"] for result in classify(paths)]
    code, out, _ = run(capsys, "--model", str(trained_run / "best"), "--image", *paths, "--json", "-")
    ours = [r["predictions"][0]["label"] for r in json.loads(out)["results"]]
    assert code == 0 and ours == theirs


def predictions_of(capsys, *argv) -> dict:
    code, out, _ = run(capsys, *argv, "--json", "-")
    assert code == 0
    return {r["path"]: r for r in json.loads(out)["results"]}


@pytest.mark.slow
def test_the_calibrated_temperature_changes_confidences_but_not_the_top_label(trained_run, images, tmp_path,
                                                                                capsys):
    hot = tmp_path / "hot"
    shutil.copytree(trained_run / "best", hot)
    info = json.loads((hot / "training_info.json").read_text())
    info.pop("temperature_folded", None)  # an unfolded temperature, as older checkpoints carry it
    (hot / "training_info.json").write_text(json.dumps({**info, "temperature": 1.0}))
    plain = predictions_of(capsys, "--model", str(hot), "--image", str(images))
    update_info(hot, temperature=4.0)
    flat = predictions_of(capsys, "--model", str(hot), "--image", str(images))
    for path, result in plain.items():
        assert flat[path]["label"] == result["label"]
        assert flat[path]["predictions"][0]["confidence"] < result["predictions"][0]["confidence"]


@pytest.mark.slow
def test_min_confidence_answers_unknown_with_the_best_guess(trained_run, images, capsys):
    sure = predictions_of(capsys, "--model", str(trained_run / "best"), "--image", str(images))
    top = {path: r["predictions"][0]["confidence"] for path, r in sure.items()}
    values = sorted(set(top.values()))
    # between two: no image sits on it
    threshold = (values[len(values) // 2 - 1] + values[len(values) // 2]) / 2
    unsure = predictions_of(capsys, "--model", str(trained_run / "best"), "--image", str(images),
                            "--min-confidence", str(threshold))
    for path, result in unsure.items():
        expected = "unknown" if top[path] < threshold else sure[path]["label"]
        assert result["label"] == expected and result["predictions"] == sure[path]["predictions"]
    assert "unknown" in {r["label"] for r in unsure.values()}
    code, out, _ = run(capsys, "--model", str(trained_run / "best"), "--image", str(images),
                       "--min-confidence", "1")
    assert code == 0 and out.count("unknown") == 6


@pytest.mark.slow
def test_tta_averages_views_and_keeps_the_output_format(trained_run, images, capsys):
    single = predictions_of(capsys, "--model", str(trained_run / "best"), "--image", str(images))
    averaged = predictions_of(capsys, "--model", str(trained_run / "best"), "--image", str(images), "--tta")
    assert averaged.keys() == single.keys()
    assert any(averaged[p]["predictions"][0]["confidence"] != single[p]["predictions"][0]["confidence"]
               for p in single)
    # 3 classes: the top 3 hold all of the probability
    assert all(abs(sum(x["confidence"] for x in r["predictions"]) - 1) < 1e-4 for r in averaged.values())
    views = tta_views(torch.rand(2, 3, 32, 32))
    assert len(views) == 4 and all(v.shape == (2, 3, 32, 32) for v in views)


@pytest.mark.slow
def test_predict_on_a_run_folder_points_to_its_best_model(trained_run, tmp_path, capsys):
    image = write_small_images(tmp_path, 1) / "0.png"
    assert predict.main(["--model", str(trained_run), "--image", str(image)]) == 2
    err = capsys.readouterr().err
    assert f"--model {shell_word(trained_run / 'best')}" in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")  # deprecated, still works
def test_predict_runs_torchscript_and_int8_exports_and_names_what_runs(trained_run, tmp_path, capsys):
    import export
    image = write_small_images(tmp_path, 1) / "0.png"
    answers = {}
    for fmt, suffix in (("torchscript", ".torchscript.pt"), ("int8", ".int8.pt")):
        model = tmp_path / f"model{suffix}"
        assert export.main(["--model", str(trained_run / "best"), "--format", fmt, "--out", str(model),
                            "--bench-rounds", "0"]) == 0
        answers[fmt] = confidences(model, image, tmp_path)
    checkpoint = confidences(trained_run / "best", image, tmp_path)
    assert max(answers["torchscript"], key=answers["torchscript"].get) == max(checkpoint, key=checkpoint.get)
    assert answers["torchscript"] == pytest.approx(checkpoint, abs=1e-4)
    assert set(answers["int8"]) == set(checkpoint)
    capsys.readouterr()
    (tmp_path / "model.bin").write_bytes(b"not a model")
    assert predict.main(["--model", str(tmp_path / "model.bin"), "--image", str(image)]) == 2
    err = capsys.readouterr().err
    assert "a file this tool cannot run" in err and ".onnx, .xml, .pt" in err and ".int8.pt" in err


def test_predict_checks_its_outputs_before_loading(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(predict, "load_for_prediction", must_not_load)
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "best").mkdir()
    cases = [
        ("--json", tmp_path / "missing" / "p.json", "does not exist"),
        ("--json", tmp_path, "is a folder"),
        ("--json", tmp_path / "a-file" / "p.json", "is a file, not a folder"),
        ("--json", "/dev/full", "not a regular file"),
        ("--json", tmp_path / "best" / "config.json", "would write into the model"),
        ("--visualize", tmp_path / "missing" / "grid.png", "does not exist"),
        ("--visualize", tmp_path / "grid", "needs a picture extension"),
        ("--visualize", tmp_path / "a-file" / "grid.png", "is a file, not a folder"),
    ]
    for option, path, message in cases:
        code = predict.main(["--model", str(tmp_path / "best"), "--image", str(tmp_path), option, str(path)])
        assert code == 2
        one_error_line(capsys.readouterr().err, option, message)
    assert not (tmp_path / "missing").exists()


@pytest.mark.slow
def test_predict_writes_exactly_the_files_named(tiny_vit, tmp_path, capsys):
    from PIL import Image
    Image.new("RGB", (40, 40), "red").save(tmp_path / "red.jpg")
    (tmp_path / "grid.jpg").write_bytes(b"an older picture")
    code = predict.main(["--model", str(tiny_vit), "--image", str(tmp_path / "red.jpg"),
                         "--precision", "fp32", "--json", str(tmp_path / "p.json"),
                         "--visualize", str(tmp_path / "grid.jpg")])
    assert code == 0 and f"Saved the picture to {tmp_path / 'grid.jpg'}" in capsys.readouterr().err
    assert Image.open(tmp_path / "grid.jpg").format == "JPEG"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.jpg", "p.json", "red.jpg"]

def test_a_model_that_outputs_nan_still_gets_its_table():
    logits = torch.tensor([[float("nan"), 0.0, 1.0], [2.0, 0.0, 0.0]])
    results = top_k_results(["broken.png", "fine.png"], ranked([logits], 1.0, 2), ["a", "b", "c"], 0.0)
    table = io.StringIO()
    print_table(results, file=table)
    lines = table.getvalue().splitlines()
    assert lines[0] == "broken.png  -> unknown: no label is confident enough"
    assert "nan%" in lines[1] and lines[1].endswith("nan%  ") and lines[4].endswith("#" * 16)
