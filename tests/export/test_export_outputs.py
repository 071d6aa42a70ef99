"""export.py's outputs (export/check.py, export/writers.py): checked before the model is loaded, written
under a temporary name, replaced only with --overwrite, and a failed or partial write keeps the previous
export."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import fill, full_disk_error, leftovers, must_not_load, one_error_line

import export
from vitclassifier.errors import UserError
from vitclassifier.export.check import ExportConfig, check_export_outputs


class FakeProgram:
    """What torch.onnx.export returns, as far as export_onnx uses it."""

    def __init__(self, opset: int, save=None):
        self.model = type("Model", (), {"opset_imports": {"": opset}, "metadata_props": {}})()
        self.saved = save or (lambda path, **_: Path(path).write_bytes(b"onnx"))

    def save(self, path, external_data=False):
        self.saved(path, external_data=external_data)


def test_export_refuses_bad_outputs_before_loading(tiny_vit, tmp_path, monkeypatch, capsys):
    import vitclassifier.export.check as exporting
    monkeypatch.setattr(exporting, "load_checkpoint", must_not_load)
    model = ["--model", str(tiny_vit), "--format", "torchscript"]
    (tmp_path / "old.torchscript.pt").write_bytes(b"an earlier export")
    (tmp_path / "a-file").write_text("x")
    cases = {
        str(tiny_vit / "model.torchscript.pt"): "would write into the checkpoint folder",
        str(tmp_path / "old.torchscript.pt"): "already exists; pass --overwrite",
        str(tmp_path / "missing" / "m.pt"): "does not exist",
        str(tmp_path / "a-file" / "m.pt"): "is a file, not a folder",
    }
    for out, message in cases.items():
        assert export.main([*model, "--out", out]) == 2
        one_error_line(capsys.readouterr().err, "--out", message)
    assert (tmp_path / "old.torchscript.pt").read_bytes() == b"an earlier export"
    assert sorted(p.name for p in tiny_vit.iterdir() if "torchscript" in p.name) == []


def test_export_checks_its_other_files_and_input_folders(tmp_path):
    out = tmp_path / "m.xml"
    out.with_suffix(".bin").mkdir()  # a folder where the weights go
    config = ExportConfig(model=tmp_path / "best", format="openvino", out=out)
    with pytest.raises(UserError, match=r"m.bin is a folder"):
        check_export_outputs(config)
    config = ExportConfig(model=tmp_path / "best", format="onnx", out=tmp_path / "m.onnx",
                          check_images=tmp_path / "nothing")
    with pytest.raises(UserError, match="--check-images .* is not a folder"):
        check_export_outputs(config)


def test_bad_opsets_are_refused_on_the_command_line(capsys):
    pytest.importorskip("onnx", reason="the opset range comes from the onnx package")
    for argv, message in ((["--format", "onnx", "--opset", "1"], "--opset must be from 17"),
                          (["--format", "onnx", "--opset", "999"], "--opset must be from 17"),
                          (["--format", "torchscript", "--opset", "18"], "--opset is for --format onnx")):
        with pytest.raises(SystemExit) as exit_info:
            export.parse_args(argv)
        assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_an_opset_the_exporter_did_not_write_is_an_error(tmp_path, monkeypatch):
    pytest.importorskip("onnxscript", reason="export_onnx needs onnx and onnxscript")
    from vitclassifier.export.writers import export_onnx
    monkeypatch.setattr(torch.onnx, "export", lambda *a, **k: FakeProgram(18))
    net, out = torch.nn.Linear(2, 2), tmp_path / "m.onnx"
    with pytest.raises(UserError, match="cannot convert this model to opset 17 .* nothing was written"):
        export_onnx(net, torch.zeros(2, 2), out, {}, 17)
    assert list(tmp_path.iterdir()) == []
    assert export_onnx(net, torch.zeros(2, 2), out, {"labels": ["a"]}, None) == 18
    assert out.read_bytes() == b"onnx" and leftovers(tmp_path) == []


def test_a_failed_onnx_write_keeps_the_previous_export(tmp_path, monkeypatch):
    pytest.importorskip("onnxscript", reason="export_onnx needs onnx and onnxscript")
    from vitclassifier.export.writers import export_onnx
    out = tmp_path / "m.onnx"
    out.write_bytes(b"the good old export")

    def truncated(path, external_data):
        Path(path).write_bytes(b"trunc")
        full_disk_error()

    monkeypatch.setattr(torch.onnx, "export", lambda *a, **k: FakeProgram(18, truncated))
    with pytest.raises(UserError, match="No space left on device; the previous file is intact"):
        export_onnx(torch.nn.Linear(2, 2), torch.zeros(2, 2), out, {}, None)
    assert out.read_bytes() == b"the good old export" and leftovers(tmp_path) == []


def test_a_failed_openvino_write_keeps_the_previous_export(tmp_path, monkeypatch):
    openvino = pytest.importorskip("openvino", reason="needs the extras (requirements-extras.txt)")
    from vitclassifier.export.openvino import save_ir
    out = tmp_path / "m.openvino.xml"
    out.write_text("old graph")
    out.with_suffix(".bin").write_text("old weights")

    def half_written(model, path, compress_to_fp16):
        Path(path).with_suffix(".bin").write_text("half")
        raise RuntimeError("Exception from src/core/src/pass/serialize.cpp: Can't open bin file")

    monkeypatch.setattr(openvino, "save_model", half_written)
    converted = type("Converted", (), {"set_rt_info": lambda self, value, key: None})()
    with pytest.raises(UserError, match="Can't open bin file; the previous file is intact"):
        save_ir(converted, out, {"labels": ["a"]})
    assert out.read_text() == "old graph" and out.with_suffix(".bin").read_text() == "old weights"
    assert leftovers(tmp_path) == []


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_export_replaces_only_when_asked_and_survives_a_full_disk(tiny_vit, small_disk, capsys):
    out = small_disk / "m.torchscript.pt"
    argv = ["--model", str(tiny_vit), "--format", "torchscript", "--out", str(out), "--bench-rounds", "0"]
    assert export.main(argv) == 0
    before = out.read_bytes()
    assert export.main(argv) == 2  # it exists now
    one_error_line(capsys.readouterr().err, "already exists; pass --overwrite")
    fill(small_disk, 48 * 1024)  # the probe fits, the export does not
    assert export.main([*argv, "--overwrite"]) == 2
    one_error_line(capsys.readouterr().err, "could not write", "the previous file is intact")
    assert out.read_bytes() == before and leftovers(small_disk) == []
    assert torch.jit.load(str(out))(torch.zeros(1, 3, 32, 32)).shape == (1, 1000)
    (small_disk / "filler").unlink()
    assert export.main([*argv, "--overwrite"]) == 0 and leftovers(small_disk) == []

