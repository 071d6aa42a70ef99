"""Outputs are checked before any work, written under a temporary name then os.replace'd, and never
destroy what was there: export.py, predict.py --json/--visualize, classifier.py --check-data --json
and --generate-data, and the helpers in vitclassifier/files.py behind them."""
from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import pytest
import torch

import classifier
import export
import predict
from vitclassifier.data.folders import load_splits, stratified_split
from vitclassifier.data.synthetic import MARK, generate_data
from vitclassifier.errors import UserError
from vitclassifier.export.check import ExportConfig, check_export_outputs
from vitclassifier.files import (
    atomic_write_bytes,
    check_output_file,
    check_output_folder,
    refuse_inside,
    write_files_via_temp,
    write_via_temp,
)


def leftovers(folder: Path) -> list[str]:
    """Temporary files or folders a write left behind in ``folder``."""
    return sorted(p.name for p in folder.rglob("*") if ".tmp" in p.name or ".probe" in p.name)


def one_error_line(err: str, *needles: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def full_disk_error(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


# ---- vitclassifier/files.py ---------------------------------------------------------------------

def test_check_output_file_refuses_what_cannot_be_written(tmp_path):
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "a-folder").mkdir()
    cases = {
        tmp_path / "missing" / "out.json": "does not exist",
        tmp_path / "a-folder": "is a folder",
        tmp_path / "a-file" / "out.json": "is a file, not a folder",
        Path("/dev/full"): "not a regular file",
    }
    for path, message in cases.items():
        with pytest.raises(UserError, match=message) as raised:
            check_output_file(path, "--json")
        assert str(raised.value).startswith(f"--json {path}")
    with pytest.raises(UserError, match="already exists; pass --overwrite"):
        check_output_file(tmp_path / "a-file", "--out", overwrite=False)
    check_output_file(tmp_path / "a-file", "--out")  # overwriting allowed by default
    check_output_file(tmp_path / "new.json", "--json")
    assert not (tmp_path / "missing").exists() and leftovers(tmp_path) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "a-folder"]


def test_check_output_folder_and_refuse_inside(tmp_path):
    (tmp_path / "a-file").write_text("x")
    check_output_folder(tmp_path / "new" / "deeper", "--out")  # created later, when written
    assert not (tmp_path / "new").exists()
    for folder in (tmp_path / "a-file", tmp_path / "a-file" / "sub"):
        with pytest.raises(UserError, match="--samples-dir .* not a folder"):
            check_output_folder(folder, "--samples-dir")
    refuse_inside(tmp_path / "best.onnx", tmp_path / "best", "--out", "the checkpoint")
    with pytest.raises(UserError, match="would write into the checkpoint"):
        refuse_inside(tmp_path / "best" / "x" / ".." / "m.onnx", tmp_path / "best", "--out", "the checkpoint")


@pytest.mark.parametrize("error", [OSError(errno.ENOSPC, "No space left on device"),
                                   RuntimeError("PytorchStreamWriter failed writing file")])
def test_a_failed_write_keeps_the_previous_file_and_no_temporary(tmp_path, error):
    path = tmp_path / "model.pt"
    path.write_bytes(b"the good old export")

    def half_then_fail(tmp: Path) -> None:
        tmp.write_bytes(b"half of a ne")
        raise error

    with pytest.raises(UserError, match=r"could not write .*model.pt: .*; the previous file is intact"):
        write_via_temp(path, half_then_fail)
    assert path.read_bytes() == b"the good old export" and leftovers(tmp_path) == []
    atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"new" and leftovers(tmp_path) == []


def test_a_failed_rename_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "out.json"
    path.write_text("old")
    monkeypatch.setattr(os, "replace", full_disk_error)
    with pytest.raises(UserError, match="No space left on device; the previous file is intact"):
        atomic_write_bytes(path, b"new")
    assert path.read_text() == "old" and leftovers(tmp_path) == []
    with pytest.raises(UserError, match="nothing was written"):
        atomic_write_bytes(tmp_path / "fresh.json", b"new")
    assert not (tmp_path / "fresh.json").exists()


def test_several_files_are_moved_in_together_or_not_at_all(tmp_path):
    out = tmp_path / "m.xml"

    def write_pair(text: str):
        def write(tmp: Path) -> None:
            tmp.with_suffix(".bin").write_text(f"{text} weights")
            tmp.write_text(f"{text} graph")
        return write

    write_files_via_temp(out, write_pair("old"))
    assert out.read_text() == "old graph" and out.with_suffix(".bin").read_text() == "old weights"

    def fail_midway(tmp: Path) -> None:
        write_pair("new")(tmp)
        raise RuntimeError("Exception from src/core: Can't write to file")

    with pytest.raises(UserError, match="Can't write to file; the previous file is intact"):
        write_files_via_temp(out, fail_midway)
    assert out.read_text() == "old graph" and out.with_suffix(".bin").read_text() == "old weights"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.bin", "m.xml"]


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs: a real full disk. Needs root and permission to mount (a container may lack it)."""
    if os.name != "posix" or os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    yield disk
    subprocess.run(["umount", str(disk)], check=True)


def fill(disk: Path, leave: int) -> None:
    """Fill ``disk`` up to ``leave`` bytes free."""
    free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
    (disk / "filler").write_bytes(b"\0" * max(0, free - leave))


def test_a_full_disk_keeps_the_previous_file(small_disk):
    path = small_disk / "predictions.json"
    atomic_write_bytes(path, b"[]\n")
    fill(small_disk, 64 * 1024)
    with pytest.raises(UserError, match="No space left on device; the previous file is intact"):
        atomic_write_bytes(path, b"x" * 2**20)
    assert path.read_bytes() == b"[]\n" and leftovers(small_disk) == []


# ---- export.py ----------------------------------------------------------------------------------

def must_not_load(*_args, **_kwargs):
    raise AssertionError("the model was loaded before the outputs were checked")


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


class FakeProgram:
    """What torch.onnx.export returns, as far as export_onnx uses it."""

    def __init__(self, opset: int, save=None):
        self.model = type("Model", (), {"opset_imports": {"": opset}, "metadata_props": {}})()
        self.saved = save or (lambda path, **_: Path(path).write_bytes(b"onnx"))

    def save(self, path, external_data=False):
        self.saved(path, external_data=external_data)


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


# ---- predict.py ---------------------------------------------------------------------------------

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


# ---- classifier.py --check-data and --generate-data ---------------------------------------------

def test_check_data_json_is_checked_before_the_audit(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("vitclassifier.data.sources.ListSource.full_audit", must_not_load)  # the audit
    generate_data(tmp_path / "data", ["circle", "star"], 2, 16, 0, tmp_path)
    capsys.readouterr()
    for target, message in ((tmp_path / "none" / "r.json", "does not exist"), (Path("/dev/full"), "regular")):
        assert classifier.main(["--check-data", str(tmp_path / "data"), "--json", str(target)]) == 2
        one_error_line(capsys.readouterr().err, "--json", message)


def test_generate_data_never_replaces_files_it_did_not_write(tmp_path, capsys):
    (tmp_path / "sample.jpg").write_bytes(b"my holiday photo")
    argv = ["--generate-data", "--out", str(tmp_path / "data"), "--classes", "circle,star",
            "--per-class", "2", "--image-size", "16", "--samples-dir", str(tmp_path)]
    assert classifier.main(argv) == 2
    one_error_line(capsys.readouterr().err, "sample.jpg", "not written by --generate-data", "--samples-dir")
    assert (tmp_path / "sample.jpg").read_bytes() == b"my holiday photo"
    assert not (tmp_path / "data").exists() and not (tmp_path / "samples").exists()
    (tmp_path / "sample.jpg").unlink()
    assert classifier.main(argv) == 0 and classifier.main(argv) == 0  # ours are replaced
    capsys.readouterr()
    from PIL import Image
    assert Image.open(tmp_path / "sample.jpg").info["comment"] == MARK
    user_file = tmp_path / "data" / "star" / "star_0001.jpg"
    user_file.write_bytes(b"not ours")
    assert classifier.main(argv) == 2
    one_error_line(capsys.readouterr().err, "star_0001.jpg", "--out")
    assert user_file.read_bytes() == b"not ours" and leftovers(tmp_path) == []


def test_generate_data_keeps_look_alike_files_and_refuses_bad_folders(tmp_path, capsys):
    (tmp_path / "data" / "square").mkdir(parents=True)
    look_alike = tmp_path / "data" / "square" / "square_0000.jpg"  # named like ours, but the user's
    look_alike.write_bytes(b"a real square")
    generate_data(tmp_path / "data", ["circle", "star"], 2, 16, 0, tmp_path / "s")
    assert look_alike.read_bytes() == b"a real square"
    (tmp_path / "a-file").write_text("x")
    for option, value in (("--out", tmp_path / "a-file"), ("--samples-dir", tmp_path / "a-file" / "s")):
        assert classifier.main(["--generate-data", "--per-class", "2", "--image-size", "16",
                                "--out", str(tmp_path / "d"), "--samples-dir", str(tmp_path / "s2"),
                                option, str(value)]) == 2
        one_error_line(capsys.readouterr().err, option, "not a folder")
    assert not (tmp_path / "d").exists() and not (tmp_path / "s2").exists()


# ---- data folder messages -----------------------------------------------------------------------

def test_a_data_file_and_many_tiny_classes_get_clear_messages(tmp_path):
    (tmp_path / "data.zip").write_bytes(b"PK")
    with pytest.raises(UserError, match="data.zip is a file, not a folder"):
        load_splits(tmp_path / "data.zip", 0.2, 0)
    classes = {f"c{i:03d}": [Path(f"c{i:03d}.jpg")] for i in range(500)}
    classes["big"] = [Path("a.jpg"), Path("b.jpg")]
    with pytest.raises(UserError) as raised:
        stratified_split(classes, 0.2, 0)
    message = str(raised.value)
    assert message.startswith("500 classes have fewer than 2 images: c000, c001,") and "(490 more)" in message
    assert "c499" not in message and len(message) < 300
