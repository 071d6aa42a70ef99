"""files.py: outputs checked before any work, written under a temporary name then os.replace'd, never
destroying what was there, and given the mode the umask gives."""
from __future__ import annotations

import os

import pytest

from vitclassifier.files import atomic_write_text, give_default_mode
from vitclassifier.model.checkpoint import save_model
from vitclassifier.model.vit import create_model


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

