"""Exports from elsewhere (export/runtimes.py, model/trust.py): what an ONNX, OpenVINO or TorchScript
file's metadata says is checked before use, against the graph where the graph knows (labels for its
outputs, its input size), else against the first answer. Each damaged file is made from one good export of
a tiny checkpoint and must end in one ``error: cannot load ...`` line (exit 2)."""
from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from helpers import CLASSES, one_line_refusal, write_small_images

import predict

EXTRAS = "needs the extras: pip install -r requirements-extras.txt"
onnx = pytest.importorskip("onnx", reason=EXTRAS)
pytest.importorskip("onnxruntime", reason=EXTRAS)
pytestmark = pytest.mark.slow  # one ONNX export (dynamo) for the module
RAW = object()  # marks a metadata value written as it is, not as JSON


@pytest.fixture(scope="module")
def exported(tiny_vit, tmp_path_factory) -> tuple[Path, torch.nn.Module, dict]:
    """A good ONNX export of a tiny 3-class checkpoint; returns (the .onnx, the model, its metadata)."""
    from vitclassifier.export.writers import describe
    from vitclassifier.model.runnable import LogitsOnly
    from vitclassifier.model.vit import create_model
    model, prep = create_model(str(tiny_vit), CLASSES)
    net = LogitsOnly(model.eval())
    out = tmp_path_factory.mktemp("onnx") / "model.onnx"
    meta = describe(prep, CLASSES, tiny_vit, "onnx", 1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(net, (torch.zeros(2, 3, 32, 32),), input_names=["pixel_values"],
                                    output_names=["logits"], dynamo=True, verbose=False,
                                    dynamic_shapes={"pixel_values": {0: torch.export.Dim("batch")}})
    for key, value in meta.items():
        program.model.metadata_props[key] = json.dumps(value)
    program.save(str(out))
    return out, net, meta


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return write_small_images(tmp_path_factory.mktemp("images"))


def onnx_with(source: Path, target: Path, **changes) -> Path:
    """``source`` with some metadata values changed (RAW: a text that is not JSON)."""
    model = onnx.load(str(source))
    for entry in model.metadata_props:
        if entry.key in changes:
            value = changes[entry.key]
            entry.value = "warm" if value is RAW else json.dumps(value)
    onnx.save(model, str(target))
    return target


ONNX_DAMAGE = {
    "5 labels, 3 outputs": ({"labels": ["a", "b", "c", "d", "e"]}, "3 outputs"),
    "labels as one text": ({"labels": "abc"}, "list of non-empty strings"),
    "duplicate labels": ({"labels": ["cat", "cat", "dog"]}, "more than once"),
    "one mean": ({"mean": [0.5]}, "mean must be 3"),
    "a zero std": ({"std": [0.5, 0.0, 0.5]}, "std must be 3"),
    "crop 0": ({"crop_pct": 0}, "crop_pct"),
    "size as text": ({"image_size": "x"}, "image size"),
    "size 100000": ({"image_size": 100000}, "image size"),
    "size unlike the graph's": ({"image_size": 64}, "takes 32 px"),
    "hot temperature": ({"temperature": "hot"}, "temperature"),
    "negative temperature": ({"temperature": -1}, "temperature"),
    "temperature not JSON": ({"temperature": RAW}, "not JSON"),
}


def test_the_good_export_predicts(exported, images, capsys):
    assert predict.main(["--model", str(exported[0]), "--image", str(images), "--device", "cpu"]) == 0
    assert "error" not in capsys.readouterr().err


@pytest.mark.parametrize("case", ONNX_DAMAGE)
def test_damaged_onnx_metadata_is_one_line(case, exported, images, tmp_path, capsys):
    changes, fragment = ONNX_DAMAGE[case]
    target = onnx_with(exported[0], tmp_path / "model.onnx", **changes)
    code = predict.main(["--model", str(target), "--image", str(images), "--device", "cpu"])
    one_line_refusal(code, capsys.readouterr().err, fragment)


def test_openvino_labels_are_checked_against_its_output_shape(exported, images, tmp_path, capsys):
    openvino = pytest.importorskip("openvino", reason=EXTRAS)
    path, _, meta = exported
    for labels, expected in ((CLASSES, 0), (["a", "b", "c", "d"], 2)):
        converted = openvino.convert_model(str(path))
        for key, value in {**meta, "labels": labels}.items():
            converted.set_rt_info(json.dumps(value), ["classifier", key])
        openvino.save_model(converted, str(tmp_path / "model.xml"))
        code = predict.main(["--model", str(tmp_path / "model.xml"), "--image", str(images)])
        err = capsys.readouterr().err
        if expected:
            one_line_refusal(code, err, "4 labels", "3 outputs")
        else:
            assert code == 0, err


def test_torchscript_labels_are_checked_against_the_first_answer(exported, images, tmp_path, capsys):
    """A traced graph doesn't say its output width: the first batch's answer is checked instead."""
    from vitclassifier.export.writers import TORCHSCRIPT_META
    _, net, meta = exported
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(net, torch.zeros(1, 3, 32, 32))
    for labels, expected in ((CLASSES, 0), (["a", "b", "c", "d"], 2)):
        extra = {TORCHSCRIPT_META: json.dumps({**meta, "labels": labels})}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TorchScript's deprecation notice
            torch.jit.save(traced, str(tmp_path / "model.pt"), _extra_files=extra)
        shutil.copy(images / "0.png", tmp_path / "0.png")
        code = predict.main(["--model", str(tmp_path / "model.pt"), "--image", str(tmp_path / "0.png")])
        err = capsys.readouterr().err
        if expected:
            one_line_refusal(code, err, "4 labels", "[3] outputs")
        else:
            assert code == 0, err
