"""files.py: outputs are checked before any work, written under a temporary name then os.replace'd,
never destroy what was there (a full disk included), and get the mode the umask gives. (Each
command's own output checks sit with its code: export/, inference/test_predict.py, data/.)"""
from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from helpers import fill, full_disk_error, leftovers

from vitclassifier.errors import UserError
from vitclassifier.files import (
    atomic_write_bytes,
    atomic_write_text,
    check_output_file,
    check_output_folder,
    give_default_mode,
    refuse_inside,
    write_files_via_temp,
    write_via_temp,
)
from vitclassifier.model.checkpoint import save_model
from vitclassifier.model.vit import create_model


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


def test_a_full_disk_keeps_the_previous_file(small_disk):
    path = small_disk / "predictions.json"
    atomic_write_bytes(path, b"[]\n")
    fill(small_disk, 64 * 1024)
    with pytest.raises(UserError, match="No space left on device; the previous file is intact"):
        atomic_write_bytes(path, b"x" * 2**20)
    assert path.read_bytes() == b"[]\n" and leftovers(small_disk) == []


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_written_files_get_the_mode_the_umask_gives(tmp_path, tiny_vit, umask):
    previous = os.umask(umask)
    try:
        model, prep = create_model(str(tiny_vit), ["a", "b"])
        save_model(model, prep, tmp_path / "best", info={})  # safetensors alone would write 0600
        atomic_write_text(tmp_path / "metrics.csv", "epoch\n")
        (tmp_path / "private").write_text("x")
        os.chmod(tmp_path / "private", 0o600)
        give_default_mode(tmp_path / "private")
    finally:
        os.umask(previous)
    files = [*(tmp_path / "best").iterdir(), tmp_path / "metrics.csv", tmp_path / "private"]
    assert {path.name: oct(path.stat().st_mode & 0o777) for path in files} == {
        path.name: oct(0o666 & ~umask) for path in files}
    assert (tmp_path / "best").stat().st_mode & 0o777 == 0o777 & ~umask

