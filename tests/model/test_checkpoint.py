"""Checkpoints (model/checkpoint.py, files.py): atomic saves that survive a full disk, a killed writer
and a crash between renames; the temperature folded into the head; refusing unsafe or inconsistent
checkpoints."""
from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from helpers import CLASSES, ROOT, confidences, write_small_images

import predict
from vitclassifier.errors import UserError
from vitclassifier.files import atomic_write_dir, exchange_paths, remove_write_leftovers
from vitclassifier.model import checkpoint
from vitclassifier.model.checkpoint import (
    fold_temperature,
    is_complete_checkpoint,
    load_checkpoint,
    read_info,
    recover_interrupted_save,
    save_model,
)


# ---------------------------------------------------------------------------
# Atomic checkpoints
# ---------------------------------------------------------------------------
@pytest.mark.slow
def test_a_failed_save_leaves_the_previous_checkpoint_intact(trained_run, tmp_path, monkeypatch):
    target = tmp_path / "best"
    shutil.copytree(trained_run / "best", target)
    model, prep, _ = load_checkpoint(target)
    before = (target / "model.safetensors").read_bytes()

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(checkpoint.torch, "save", disk_full)
    with torch.no_grad():
        model.classifier.weight.add_(1.0)
    with pytest.raises(UserError, match="No space left.*previous checkpoint there is intact"):
        save_model(model, prep, target, training_state={"epoch": 1})
    assert (target / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]  # no best.tmp or best.old left
    load_checkpoint(target)


def whole(old) -> bool:
    """What a whole copy of the directories written below holds (atomic_write_dir asks)."""
    return (old / "weights.bin").is_file()


@pytest.mark.slow
def test_a_writer_killed_mid_save_leaves_the_previous_checkpoint(tmp_path):
    target = tmp_path / "ckpt"
    atomic_write_dir(target, lambda d: (d / "weights.bin").write_bytes(b"old" * 1000), whole)
    writer = subprocess.Popen([sys.executable, "-c", f"""
import sys, time
sys.path.insert(0, {str(ROOT)!r})
from vitclassifier.files import atomic_write_dir
def slow(d):
    with open(d / "weights.bin", "wb") as f:
        for _ in range(10_000):
            f.write(b"new" * 10_000)
            print("writing", flush=True)
            time.sleep(0.01)
atomic_write_dir({str(target)!r}, slow, lambda old: (old / "weights.bin").is_file())
"""], stdout=subprocess.PIPE, text=True)
    assert writer.stdout.readline().strip() == "writing"
    writer.kill()  # SIGKILL: no cleanup code runs
    writer.wait()
    assert (target / "weights.bin").read_bytes() == b"old" * 1000
    # the leftover .tmp is cleared
    atomic_write_dir(target, lambda d: (d / "weights.bin").write_bytes(b"next"), whole)
    assert (target / "weights.bin").read_bytes() == b"next"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


@pytest.mark.slow
def test_a_crash_between_the_renames_is_recovered_on_load(trained_run, tmp_path):
    shutil.copytree(trained_run / "best", tmp_path / "best.old")  # NAME renamed away, new one not yet in
    model, _, labels = load_checkpoint(tmp_path / "best")
    assert (tmp_path / "best" / "model.safetensors").is_file() and len(labels) == 3


# ---------------------------------------------------------------------------
# Loading checkpoints from elsewhere
# ---------------------------------------------------------------------------
def broken_copy(trained_run, tmp_path, change):
    target = tmp_path / "ckpt"
    shutil.copytree(trained_run / "best", target)
    change(target)
    return target


def drop_label_map(target):
    config = json.loads((target / "config.json").read_text())
    del config["id2label"], config["label2id"]
    (target / "config.json").write_text(json.dumps(config))


def five_labels(target):
    config = json.loads((target / "config.json").read_text())
    config["id2label"] = {str(i): f"class{i}" for i in range(5)}
    config["label2id"] = {f"class{i}": i for i in range(5)}
    (target / "config.json").write_text(json.dumps(config))


def pickled_weights_only(target):
    from safetensors.torch import load_file
    torch.save(load_file(target / "model.safetensors"), target / "pytorch_model.bin")
    (target / "model.safetensors").unlink()


@pytest.mark.slow
@pytest.mark.parametrize("change, message", [
    (drop_label_map, "no label map"),
    (five_labels, "label map"),
    (pickled_weights_only, "only safetensors weights are loaded"),
])
def test_unsafe_or_inconsistent_checkpoints_are_refused(trained_run, tmp_path, change, message, capsys):
    target = broken_copy(trained_run, tmp_path, change)
    with pytest.raises(UserError, match=message):
        load_checkpoint(target)
    assert predict.main(["--model", str(target), "--image", str(tmp_path)]) == 2
    assert "Traceback" not in capsys.readouterr().err


def fake_checkpoint(directory, weights: bytes = b"w") -> None:
    directory.mkdir(parents=True)
    for name in ("config.json", "preprocessor_config.json"):
        (directory / name).write_text("{}")
    (directory / "model.safetensors").write_bytes(weights)


def test_a_swap_never_leaves_the_name_missing(tmp_path, monkeypatch):
    """Where the system exchanges directories atomically, a save never renames the old copy away
    (which would leave the name missing for a moment): forbid renames, and the swap still works."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    if not exchange_paths(tmp_path / "a", tmp_path / "b"):
        pytest.skip("this system cannot exchange two directories atomically (renameat2)")
    target = tmp_path / "best"
    atomic_write_dir(target, lambda d: (d / "v").write_text("1"), is_complete_checkpoint)

    def no_rename(self, other):
        raise AssertionError(f"renamed {self} -> {other}: the name was missing for a moment")
    monkeypatch.setattr(type(target), "rename", no_rename)
    atomic_write_dir(target, lambda d: (d / "v").write_text("2"), is_complete_checkpoint)
    assert (target / "v").read_text() == "2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "best"]


def test_only_a_complete_old_copy_is_put_back(tmp_path):
    fake_checkpoint(tmp_path / "last.old", weights=b"")  # a copy a crash left half-removed: no weights
    recover_interrupted_save(tmp_path / "last")
    assert not (tmp_path / "last").exists()
    shutil.rmtree(tmp_path / "last.old")
    fake_checkpoint(tmp_path / "last.old")
    recover_interrupted_save(tmp_path / "last")
    assert (tmp_path / "last" / "model.safetensors").read_bytes() == b"w"


def test_leftovers_of_a_crash_are_cleaned_before_the_next_save_but_never_on_load(tmp_path):
    fake_checkpoint(tmp_path / "best")
    fake_checkpoint(tmp_path / "best.tmp")  # a save that never finished
    fake_checkpoint(tmp_path / "best.old", weights=b"")  # a removal that never finished
    recover_interrupted_save(tmp_path / "best")  # what every load does: nothing is deleted
    assert (tmp_path / "best.tmp").exists() and (tmp_path / "best.old").exists()
    remove_write_leftovers(tmp_path / "best", is_complete_checkpoint)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]


@pytest.fixture(scope="module")
def unfolded(trained_run, tmp_path_factory):
    """The trained checkpoint with its head as training left it (T = 1) and an image to predict."""
    folder = tmp_path_factory.mktemp("unfolded")
    model, prep, labels = load_checkpoint(trained_run / "best")
    save_model(model, prep, folder / "best", info={"labels": labels})
    return folder / "best", write_small_images(folder, 1) / "0.png"


@pytest.mark.slow
def test_pipeline_predict_and_an_old_unfolded_checkpoint_agree(unfolded, tmp_path):
    from transformers import pipeline
    source, image = unfolded
    model, prep, _ = load_checkpoint(source)
    folded = tmp_path / "folded"
    save_model(model, prep, folded, info={})
    fold_temperature(folded, {"temperature": 3.0})
    info = read_info(folded)
    assert info["temperature"] == 1.0 and info["temperature_folded"] == 3.0  # nothing left to divide
    old = tmp_path / "old"  # a checkpoint of an earlier version: unfolded head, T in training_info.json
    save_model(model, prep, old, info={"temperature": 3.0})
    ours, older = confidences(folded, image, tmp_path), confidences(old, image, tmp_path)
    theirs = {answer["label"]: answer["score"]
              for answer in pipeline("image-classification", model=str(folded))(str(image), top_k=3)}
    plain = confidences(source, image, tmp_path)  # T = 1: sharper than either
    assert set(ours) == set(theirs) == set(older) == set(CLASSES)
    for label in CLASSES:
        assert ours[label] == pytest.approx(theirs[label], abs=1e-4) == pytest.approx(older[label], abs=1e-4)
    assert max(plain.values()) > max(ours.values()) + 1e-3  # the temperature did change something


def test_a_folded_temperature_is_checked_like_any_temperature(tmp_path):
    (tmp_path / "training_info.json").write_text(json.dumps({"temperature": 1.0, "temperature_folded": -2}))
    with pytest.raises(UserError, match="temperature must be a finite number above 0"):
        read_info(tmp_path)


@pytest.mark.slow
def test_training_folds_its_calibration_into_best(trained_run):
    info = read_info(trained_run / "best")
    assert info["temperature"] == 1.0 and info["temperature_folded"] > 0 and info["calibration"]

