"""OpenVINO exports (export.py --format openvino | openvino-int8; export/openvino.py and
export/runtimes.py): what the IR carries, int8 where calibrated, predict.py and the web page running the
.xml like a checkpoint (train.py --evaluate: evaluation/test_evaluation.py), and one-line errors for the
mistakes. (Agreement of int8 predictions with fp32 on 1200 images is in
inference/test_fast_prediction.py.)"""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from helpers import CLASSES

import export
import predict
from vitclassifier.export.runtimes import load_export
from vitclassifier.export.writers import read_meta
from vitclassifier.inference.webapp import make_classify

openvino = pytest.importorskip("openvino", reason="needs the extras: pip install -r requirements-extras.txt")


def op_types(path) -> list[str]:
    return [op.get_type_name() for op in openvino.Core().read_model(str(path)).get_ops()]


def test_int8_export_is_calibrated_checked_and_carries_what_predict_needs(openvino_int8_export, trained_run):
    path, report = openvino_int8_export
    assert "Calibrating the int8 ranges on 64 images from" in report
    agree, total = (int(n) for n in report.split("top-1 agreement ")[1].split()[0].split("/"))
    assert total == 16 and agree >= 15 and "OpenVINO int8" in report
    assert "FakeQuantize" in op_types(path)  # int8 matmuls, not a float model
    model = load_export(path, bf16=False)
    prep, labels = read_meta(model.meta, path)
    sidecar = json.loads(path.with_name(path.name + ".json").read_text())
    assert model.meta == sidecar and labels == CLASSES and sidecar["format"] == "openvino-int8"
    assert prep.image_size == 32 and "64 images" in sidecar["calibrated_on"]
    files = sorted(p.name for p in path.parent.iterdir())
    assert files == ["model.bin", "model.xml", "model.xml.json"]  # no temp files


def test_fp32_export_predicts_what_the_checkpoint_predicts(trained_run, pattern_data, tmp_path, capsys):
    out = tmp_path / "fp32.xml"
    assert export.main(["--model", str(trained_run / "best"), "--format", "openvino", "--out", str(out),
                        "--bench-rounds", "0"]) == 0
    assert "FakeQuantize" not in op_types(out)
    capsys.readouterr()
    results = []
    for model in (out, trained_run / "best"):
        assert predict.main(["--model", str(model), "--image", str(pattern_data / "plain"), "--json", "-",
                             "--precision", "fp32"]) == 0
        results.append(json.loads(capsys.readouterr().out)["results"])
    assert [r["path"] for r in results[0]] == [r["path"] for r in results[1]] and len(results[0]) == 400
    for a, b in zip(*results):
        assert [p["label"] for p in a["predictions"]] == [p["label"] for p in b["predictions"]]
        assert np.allclose([p["confidence"] for p in a["predictions"]],
                           [p["confidence"] for p in b["predictions"]], atol=1e-4)


def test_mistakes_with_openvino_models_are_one_line_errors(openvino_int8_export, trained_run, pattern_data,
                                                           tmp_path, monkeypatch, capsys):
    xml = str(openvino_int8_export[0])
    images = ["--image", str(pattern_data / "plain" / "plain_000.png")]
    for conflict, says in ((["--quantize"], "runs as it was exported"),
                           (["--runtime", "openvino"], "--runtime"),
                           (["--device", "cuda"], "runs on the CPU")):
        with pytest.raises(SystemExit) as stopped:
            predict.main(["--model", xml, *images, *conflict])
        assert stopped.value.code == 2 and says in capsys.readouterr().err
    assert predict.main(["--model", str(tmp_path / "missing.xml"), *images]) == 2
    assert "missing.xml (and its .bin beside it) not found" in capsys.readouterr().err
    checkpoint = ["--model", str(trained_run / "best"), "--bench-rounds", "0"]
    with pytest.raises(SystemExit) as stopped:
        export.main([*checkpoint, "--format", "openvino-int8", "--out", str(tmp_path / "m.bin")])
    assert stopped.value.code == 2 and "must end in .xml" in capsys.readouterr().err
    assert export.main([*checkpoint, "--format", "openvino-int8", "--out", str(tmp_path / "m.xml"),
                        "--calibration-images", str(tmp_path / "nothing-here")]) == 2
    assert "is not a folder: give images like those" in capsys.readouterr().err
    assert not (tmp_path / "m.xml").exists()
    monkeypatch.setitem(sys.modules, "nncf", None)  # as if it were not installed: importing it fails
    assert export.main([*checkpoint, "--format", "openvino-int8", "--out", str(tmp_path / "m.xml"),
                        "--calibration-images", str(pattern_data)]) == 2
    assert "needs the nncf package: pip install openvino nncf" in capsys.readouterr().err


def test_the_web_page_serves_an_openvino_model_as_predict_does(openvino_int8_export, pattern_data, capsys):
    xml = openvino_int8_export[0]
    paths = [pattern_data / name / f"{name}_007.png" for name in CLASSES]
    labels, can_explain, classify = make_classify(xml, "auto", 32)
    assert not can_explain  # an export has no gradients
    results, errors = classify([str(p) for p in paths], 2)
    assert labels == CLASSES and errors == "" and [r["name"] for r in results] == [p.name for p in paths]
    assert predict.main(["--model", str(xml), "--image", *map(str, paths), "--top-k", "2",
                         "--json", "-"]) == 0
    for ours, theirs in zip(results, json.loads(capsys.readouterr().out)["results"]):
        assert ours["predictions"] == theirs["predictions"]
