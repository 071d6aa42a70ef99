"""The output folder (training/output.py) is claimed, locked and checked before training, so nothing
the user had is lost: never the user's own files, never inside the data, one run at a time, enough
free space."""
from __future__ import annotations

import json

import pytest
from helpers import CLASSES, make_pattern_folder, run_args

from vitclassifier.errors import UserError
from vitclassifier.training.output import LOCK, MARKER, OutputLock, claim_output_dir


def fake_checkpoint(directory, weights: bytes = b"w") -> None:
    directory.mkdir(parents=True)
    for name in ("config.json", "preprocessor_config.json"):
        (directory / name).write_text("{}")
    (directory / "model.safetensors").write_bytes(weights)


def claim(output_dir, data_dir, resuming=False, overwrite=False, needed=0, image_folders=()):
    lock = claim_output_dir(output_dir, data_dir, image_folders, resuming, overwrite, needed)
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


@pytest.mark.parametrize("inside", ["", "runs"])
def test_an_output_folder_among_a_label_files_images_is_refused_untouched(tmp_path, tiny_vit, inside, capsys):
    """The label file lies apart from its images: --data is no folder to be inside of, its images'
    folders are what the run must not write into."""
    import train
    images = make_pattern_folder(tmp_path / "images", per_class=6, size=32)
    rows = [f"images/{path.parent.name}/{path.name},{path.parent.name}"
            for path in sorted(images.rglob("*.png"))]
    (tmp_path / "labels.csv").write_text("file,label\n" + "\n".join(rows) + "\n")
    out = images / CLASSES[0] / inside
    before = sorted(out.parent.rglob("*"))
    assert train.main(run_args(out, tmp_path / "labels.csv", tiny_vit)) == 2
    assert f"--output-dir {out} would write into an image folder of the data" in capsys.readouterr().err
    assert sorted(out.parent.rglob("*")) == before  # nothing created: no lock, no marker, no runs/


def test_a_second_run_into_a_locked_folder_is_refused_naming_the_first(tmp_path):
    out = tmp_path / "out"
    first = claim_output_dir(out, tmp_path / "data", (), False, False, 0)
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
