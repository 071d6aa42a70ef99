"""Nothing the user had is lost: the output folder is claimed, locked and checked before training;
checkpoint swaps leave a whole checkpoint under its name at every instant; options that are not
numbers are refused in one place."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from helpers import TRAIN_OPTIONS

from vitclassifier.config import TrainConfig
from vitclassifier.errors import UserError
from vitclassifier.files import atomic_write_dir, exchange_paths, remove_write_leftovers
from vitclassifier.model.checkpoint import is_complete_checkpoint, recover_interrupted_save
from vitclassifier.training.distributed import step_seed
from vitclassifier.training.output import LOCK, MARKER, OutputLock, claim_output_dir


def fake_checkpoint(directory, weights: bytes = b"w") -> None:
    directory.mkdir(parents=True)
    for name in ("config.json", "preprocessor_config.json"):
        (directory / name).write_text("{}")
    (directory / "model.safetensors").write_bytes(weights)


def claim(output_dir, data_dir, resuming=False, overwrite=False, needed=0):
    lock = claim_output_dir(output_dir, data_dir, resuming, overwrite, needed)
    lock.release()


def test_a_folder_with_the_users_own_files_is_refused_and_left_untouched(tmp_path):
    out = tmp_path / "out"
    (out / "best").mkdir(parents=True)
    (out / "best" / "thesis.docx").write_text("years of work")
    (out / "metrics.csv").write_text("my,own,table\n")
    with pytest.raises(UserError, match="did not write.*best.*metrics.csv"):
        claim(out, tmp_path / "data", overwrite=True)
    assert (out / "best" / "thesis.docx").read_text() == "years of work"
    assert (out / "metrics.csv").read_text() == "my,own,table\n"
    assert not (out / MARKER).exists() and not (out / LOCK).exists()


def test_a_finished_run_is_replaced_only_with_overwrite_and_only_our_files(tmp_path):
    out = tmp_path / "out"
    fake_checkpoint(out / "best")
    (out / "best" / "training_info.json").write_text(json.dumps({"epoch": 3, "val_acc": 0.9}))
    fake_checkpoint(out / "last")
    (out / "metrics.csv").write_text("epoch,train_loss\n1,0.5\n")
    with pytest.raises(UserError, match=r"holds a training run \(best epoch 3.*--resume.*--overwrite"):
        claim(out, tmp_path / "data")
    assert (out / "best" / "model.safetensors").is_file()
    claim(out, tmp_path / "data", resuming=True)  # continuing it is fine, and marks the folder as ours
    (out / "notes.txt").write_text("the user's")
    claim(out, tmp_path / "data", overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == sorted([MARKER, LOCK, "notes.txt"])


def test_an_output_folder_inside_the_data_is_refused(tmp_path):
    (tmp_path / "data" / "cat").mkdir(parents=True)
    with pytest.raises(UserError, match="inside --data"):
        claim(tmp_path / "data" / "runs", tmp_path / "data")
    assert not (tmp_path / "data" / "runs").exists()


def test_a_second_run_into_a_locked_folder_is_refused_naming_the_first(tmp_path):
    out = tmp_path / "out"
    first = claim_output_dir(out, tmp_path / "data", False, False, 0)
    try:
        with pytest.raises(UserError, match=r"in use by another training run \(pid \d+"):
            claim(out, tmp_path / "data", resuming=True)
    finally:
        first.release()
    claim(out, tmp_path / "data")  # free again once the first run ends


def test_too_little_space_is_refused_before_training(tmp_path):
    with pytest.raises(UserError, match="MiB free"):
        claim(tmp_path / "out", tmp_path / "data", needed=2**62)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(UserError, match="cannot write to --output-dir"):
        claim(blocker / "out", tmp_path / "data")


def test_the_lock_file_names_its_holder(tmp_path):
    lock = OutputLock(tmp_path)
    try:
        assert (tmp_path / LOCK).read_text().startswith("pid ")
    finally:
        lock.release()


# ---------------------------------------------------------------------------
# Checkpoint swaps and what crashes leave
# ---------------------------------------------------------------------------
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


# ---------------------------------------------------------------------------
# Numbers that are not numbers
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("options, message", [
    ({"lr": float("inf")}, "finite"), ({"weight_decay": float("nan")}, "finite"),
    ({"head_lr": float("inf")}, "finite"), ({"mixup": float("inf")}, "finite"),
    ({"cutmix": 1e-300}, "--cutmix"), ({"num_workers": 200}, "--num-workers: at most"),
    ({"image_size": 100000}, "--image-size"), ({"batch_size": "7"}, "--batch-size '7' is not int"),
    ({"epochs": True}, "--epochs 'True' is not int"), ({"data": 5}, "--data '5' is not Path"),
])
def test_options_that_are_not_usable_numbers_are_refused_in_one_place(options, message):
    with pytest.raises(UserError, match=message):
        TrainConfig.from_options(options)


@pytest.mark.parametrize("seed", [0, 100_000_000, -30_000_000, 2**70])
def test_any_seed_gives_a_seed_torch_takes(seed):
    recipe = TrainConfig.from_options({"seed": seed}).recipe
    torch.manual_seed(step_seed(recipe, epoch=5, step=10**6, micro=3, rank=7))


# ---------------------------------------------------------------------------
# Whole runs (tiny)
# ---------------------------------------------------------------------------
@pytest.mark.slow
def test_divergence_stops_with_one_line_and_keeps_no_nan(tiny_vit, pattern_data, tmp_path, capsys):
    import train
    out = tmp_path / "out"
    code = train.main(["--data", str(pattern_data), "--model", str(tiny_vit), "--output-dir", str(out),
                       *TRAIN_OPTIONS, "--lr", "1e30", "--head-lr", "1e30", "--epochs", "1"])
    err = capsys.readouterr().err
    assert code == 2 and "training diverged in epoch 1" in err and "Traceback" not in err
    assert not (out / "best").exists()


@pytest.mark.slow
def test_a_step_larger_than_the_training_set_trains_on_every_image(tiny_vit, tmp_path, capsys):
    from helpers import make_pattern_folder

    import train
    data = make_pattern_folder(tmp_path / "data", per_class=4)
    out = tmp_path / "out"
    code = train.main(["--data", str(data), "--model", str(tiny_vit), "--output-dir", str(out),
                       *TRAIN_OPTIONS, "--batch-size", "8", "--grad-accum", "4"])
    assert code == 0, capsys.readouterr().err
    info = json.loads((out / "best" / "training_info.json").read_text())
    assert info["train_images"] == 9  # one smaller step of all 3 x 4 - 3 held out, every epoch
