"""export.py (export/check.py): ONNX, TorchScript and int8 artefacts agree with PyTorch, carry
their labels and preprocessing, predict.py runs the ONNX one through onnxruntime with the same
results, and the speeds are timed in turns."""
from __future__ import annotations

import contextlib
import io
import json
import re
import shutil

import numpy as np
import pytest
import torch
from helpers import CLASSES
from PIL import Image

import export
import predict
from vitclassifier.data.images import load_image
from vitclassifier.data.transforms import eval_transform
from vitclassifier.export.files import FORMATS
from vitclassifier.export.runtimes import load_export
from vitclassifier.export.writers import read_meta
from vitclassifier.model.checkpoint import load_checkpoint
from vitclassifier.model.runnable import LogitsOnly

pytestmark = pytest.mark.slow  # every test here exports the trained checkpoint, or runs the export
EXTRAS = "export tests need the extras: pip install -r requirements-extras.txt"
onnx = pytest.importorskip("onnx", reason=EXTRAS)
ort = pytest.importorskip("onnxruntime", reason=EXTRAS)


def checked(out: str) -> tuple[float, int, int]:
    """(max |logit difference|, images agreeing, images) from export.py's report."""
    found = re.search(r"max \|logit difference\| (\S+), top-1 agreement (\d+)/(\d+)", out)
    assert found, out
    return float(found[1]), int(found[2]), int(found[3])


@pytest.fixture(scope="module")
def images(pattern_data, tmp_path_factory):
    """Nine images to check and predict on, three per class."""
    folder = tmp_path_factory.mktemp("check-images")
    for name in CLASSES:
        for i in range(3):
            shutil.copy(pattern_data / name / f"{name}_{i:03d}.png", folder / f"{name}{i}.png")
    return folder


@pytest.fixture(scope="module")
def onnx_export(trained_run, images, tmp_path_factory):
    """The trained checkpoint exported once to ONNX; returns (path, export.py's stdout)."""
    out = tmp_path_factory.mktemp("onnx") / "model.onnx"
    stdout, threads = io.StringIO(), torch.get_num_threads()  # capsys is for single tests only
    with contextlib.redirect_stdout(stdout):
        code = export.main(["--model", str(trained_run / "best"), "--format", "onnx", "--out", str(out),
                            "--check-images", str(images), "--bench-rounds", "1", "--threads", "1"])
    assert code == 0, stdout.getvalue()
    assert torch.get_num_threads() == threads  # --threads must not leak into later tests' training
    return out, stdout.getvalue()


def test_onnx_export_matches_pytorch_with_a_dynamic_batch(onnx_export, trained_run, images):
    path, report = onnx_export
    difference, agree, total = checked(report)
    assert difference < 1e-4 and agree == total == 9
    assert "1 thread(s), images/s" in report and "ONNX Runtime" in report
    model = onnx.load(str(path))
    batch_axis = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_axis.dim_param and not batch_axis.dim_value  # symbolic, not a fixed size
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    net = LogitsOnly(load_checkpoint(trained_run / "best")[0]).eval()
    for size in (1, 5):
        pixels = torch.randn(size, 3, 32, 32)
        with torch.inference_mode():
            expected = net(pixels).numpy()
        assert np.abs(session.run(None, {"pixel_values": pixels.numpy()})[0] - expected).max() < 1e-4


def test_onnx_carries_labels_preprocessing_and_opset(onnx_export, trained_run):
    path, report = onnx_export
    _, prep, labels = load_checkpoint(trained_run / "best")
    sidecar = json.loads(path.with_name("model.onnx.json").read_text())
    embedded = {p.key: json.loads(p.value) for p in onnx.load(str(path)).metadata_props}
    assert embedded == sidecar
    assert sidecar["labels"] == labels == CLASSES
    assert (sidecar["image_size"], sidecar["crop_pct"], sidecar["resize_size"]) == (
        prep.image_size, prep.crop_pct, prep.resize_size)
    assert sidecar["mean"] == list(prep.mean) and sidecar["std"] == list(prep.std)
    info = json.loads((trained_run / "best" / "training_info.json").read_text())
    assert sidecar["temperature"] == info.get("temperature", 1.0)  # calibrated by train.py, else 1
    opset = {o.domain: o.version for o in onnx.load(str(path)).opset_import}[""]
    assert sidecar["opset"] == opset and f"opset {opset}" in report


def test_predict_with_the_onnx_model_gives_the_checkpoints_results(onnx_export, trained_run, images, capsys):
    results = {}
    for model in (onnx_export[0], trained_run / "best"):
        assert predict.main(["--model", str(model), "--image", str(images), "--top-k", "2", "--json", "-",
                             *([] if model.suffix == ".onnx" else ["--precision", "fp32"])]) == 0
        results[model] = json.loads(capsys.readouterr().out)["results"]
    ours, theirs = results.values()
    assert [r["path"] for r in ours] == [r["path"] for r in theirs] and len(ours) == 9
    for a, b in zip(ours, theirs):
        assert [p["label"] for p in a["predictions"]] == [p["label"] for p in b["predictions"]]
        assert np.allclose([p["confidence"] for p in a["predictions"]],
                           [p["confidence"] for p in b["predictions"]], atol=1e-5)


def predict_without_our_code(model_path, image_path) -> tuple[str, float, np.ndarray]:
    """The recipe in docs/ecosystem.md, line for line: onnxruntime, Pillow and NumPy only.
    Returns the top label, its confidence and the logits divided by the temperature."""
    meta = json.load(open(f"{model_path}.json"))
    session = ort.InferenceSession(str(model_path))
    image = Image.open(image_path).convert("RGB")
    scale = meta["resize_size"] / min(image.size)  # shorter side -> resize_size, then centre crop
    image = image.resize((int(image.width * scale), int(image.height * scale)), Image.BICUBIC)
    size = meta["image_size"]
    left, top = round((image.width - size) / 2), round((image.height - size) / 2)
    crop = np.asarray(image.crop((left, top, left + size, top + size)), np.float32)
    pixels = ((crop / 255 - meta["mean"]) / meta["std"]).transpose(2, 0, 1)[None].astype(np.float32)
    logits = session.run(None, {"pixel_values": pixels})[0][0] / meta["temperature"]
    confidences = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    return meta["labels"][confidences.argmax()], float(confidences.max()), logits


def test_the_onnx_model_works_without_our_code(onnx_export, images):
    model = load_export(onnx_export[0], bf16=False)
    prep, labels = read_meta(model.meta, onnx_export[0])
    for path in sorted(images.iterdir()):
        label, confidence, logits = predict_without_our_code(onnx_export[0], path)
        ours = model(pixel_values=eval_transform(prep)(load_image(path))[None]).logits[0].numpy()
        # Pillow's bicubic resize differs from torchvision's by a grey level here and there, no more
        assert label == labels[ours.argmax()] and 0 < confidence <= 1
        assert np.abs(logits - ours / model.meta["temperature"]).max() < 0.05


@pytest.mark.parametrize("fmt", ["torchscript", "int8"])
@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")  # deprecated, still works
def test_torchscript_and_int8_are_reloaded_and_compared(fmt, trained_run, tmp_path, capsys):
    checkpoint = shutil.copytree(trained_run / "best", tmp_path / "best")
    info = json.loads((checkpoint / "training_info.json").read_text())
    info.pop("temperature_folded", None)  # an unfolded temperature, as older checkpoints carry it
    (checkpoint / "training_info.json").write_text(json.dumps({**info, "temperature": 1.7}))
    assert export.main(["--model", str(checkpoint), "--format", fmt, "--bench-rounds", "1"]) == 0
    out = capsys.readouterr().out
    difference, agree, total = checked(out)
    assert "16 synthetic images" in out and total == 16 and "images/s" in out
    path = tmp_path / f"best{FORMATS[fmt]}"  # the default --out: beside the checkpoint
    files = {"classifier.json": ""}
    loaded = torch.jit.load(str(path), _extra_files=files)
    meta = json.loads(files["classifier.json"])
    assert meta == json.loads((tmp_path / f"{path.name}.json").read_text())
    assert meta["labels"] == CLASSES and meta["temperature"] == 1.7 and meta["format"] == fmt
    quantized = "quantized::linear_dynamic" in str(loaded.inlined_graph)
    if fmt == "torchscript":
        assert difference < 1e-5 and agree == total and not quantized
    else:  # int8 weights change the logits a little, rarely the top label
        assert quantized and 0 < difference < 0.5 and agree >= 0.8 * total


def test_user_mistakes_are_one_line_errors(trained_run, tmp_path, capsys):
    assert export.main(["--model", str(tmp_path / "missing"), "--format", "onnx"]) == 2
    assert "error:" in capsys.readouterr().err
    assert export.main(["--model", str(trained_run / "best"), "--format", "torchscript", "--out",
                        str(tmp_path / "m.pt"), "--check-images", str(tmp_path / "nothing-here")]) == 2
    assert "--check-images" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        export.main(["--model", str(trained_run / "best"), "--format", "onnx",
                     "--out", str(tmp_path / "m.bin")])
    assert exit_info.value.code == 2 and "must end in .onnx" in capsys.readouterr().err
    assert predict.main(["--model", str(tmp_path / "missing.onnx"), "--image", str(tmp_path)]) == 2
    assert "not found" in capsys.readouterr().err


def test_export_speeds_are_timed_in_turns_and_a_noisy_speed_up_is_left_out():
    from vitclassifier.export.check import TURN_PAUSE, speed_report, timed_in_turns
    now, calls, pauses = [0.0], [], []  # a clock that moves only when a model runs: no machine's load counts

    def model(name, seconds):
        return lambda batch: (calls.append(name), now.__setitem__(0, now[0] + seconds))
    runs = [model("torch", 2**-6), model("export", 2**-7)]  # powers of two: the sums are exact
    base, exported = timed_in_turns(runs, torch.zeros(1), 3, clock=lambda: now[0], pause=pauses.append)
    assert calls == ["torch", "export"] * 5 and pauses == [TURN_PAUSE] * 10  # 2 warm-up rounds, in turns
    assert base == [2**-6] * 3 and exported == [2**-7] * 3  # the warm-up rounds left out
    steady = speed_report("Engine", base, exported, 32, None)
    assert "Engine" in steady and "2.00x PyTorch's speed" in steady and "left out" not in steady
    noisy = speed_report("Engine", [0.02, 0.02, 0.02], [0.01, 0.04, 0.002], 32, None)
    assert "speed-up left out: it varied from 0.50x to 10.00x" in noisy and "x PyTorch's speed" not in noisy

