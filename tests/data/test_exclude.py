"""train.py --exclude FILE (data/exclude.py): reviewed images left out, recorded, and held to on resume."""
from __future__ import annotations

import json

import pytest
import torch
from helpers import make_pattern_folder, run_args

from vitclassifier.config import TrainConfig
from vitclassifier.data.exclude import apply_exclude, read_exclude_list
from vitclassifier.data.folders import load_splits
from vitclassifier.errors import UserError
from vitclassifier.training.distributed import World
from vitclassifier.training.setup import load_data


@pytest.fixture
def small_data(tmp_path):
    return make_pattern_folder(tmp_path / "data", per_class=10, size=32)


def test_a_text_list_and_a_csv_path_column_are_read(tmp_path):
    text = tmp_path / "reviewed.txt"
    text.write_text("# wrong labels\nplain/plain_001.png\n\n  vertical/vertical_002.png  \n")
    assert read_exclude_list(text) == ["plain/plain_001.png", "vertical/vertical_002.png"]
    table = tmp_path / "label_issues.csv"
    table.write_text("path,split,given_label\nplain/plain_003.png,train,plain\n,val,x\n")
    assert read_exclude_list(table) == ["plain/plain_003.png"]


@pytest.mark.parametrize("content, fragment", [(None, "does not exist"),
                                               ("file,label\na.png,x\n", "needs a 'path' column")])
def test_an_unusable_list_is_one_clear_error(tmp_path, content, fragment):
    path = tmp_path / "list.csv"
    if content is not None:
        path.write_text(content)
    with pytest.raises(UserError, match=fragment) as error:
        read_exclude_list(path)
    assert "--exclude" in str(error.value)


def test_listed_images_are_left_out_and_the_rest_is_named(small_data, tmp_path, capsys):
    labels, train, val = load_splits(small_data, 0.2, 42)
    listed = [train[0][0], val[0][0]]
    exclude = tmp_path / "out.txt"
    exclude.write_text(f"{listed[0].relative_to(small_data)}\n{listed[1]}\nplain/no_such_file.png\n")
    kept_train, kept_val, record = apply_exclude(exclude, small_data, train, val)
    assert (len(kept_train), len(kept_val)) == (len(train) - 1, len(val) - 1)
    assert not {path for path, _ in kept_train + kept_val} & set(listed)
    assert record["left_out"] == {"train": 1, "val": 1} and record["listed"] == 3
    captured = capsys.readouterr()
    assert "left out 1 training and 1 validation image(s), 2 of the 3 paths listed" in captured.out
    assert "1 listed path(s) match no image" in captured.err and "plain/no_such_file.png" in captured.err
    other = tmp_path / "other.txt"
    other.write_text(f"{listed[0].relative_to(small_data)}\n")
    assert apply_exclude(other, small_data, train, val)[2]["sha256"] != record["sha256"]


def test_a_run_records_the_list_and_a_resume_refuses_a_changed_one(small_data, tiny_vit, tmp_path):
    import train
    _, train_samples, _ = load_splits(small_data, 0.2, 1)
    exclude = tmp_path / "label_issues.csv"
    exclude.write_text(f"path\n{train_samples[0][0].relative_to(small_data)}\n")
    out = tmp_path / "run"
    args = run_args(out, small_data, tiny_vit) + ["--exclude", str(exclude), "--epochs", "1"]
    assert train.main(args) == 0
    info = json.loads((out / "best" / "training_info.json").read_text())
    assert info["data"]["exclude"]["left_out"] == {"train": 1, "val": 0}
    assert info["train_images"] == len(train_samples) - 1
    state = torch.load(out / "last" / "training_state.pt", weights_only=True)
    assert state["options"]["exclude"] == str(exclude)

    config = TrainConfig.from_options(vars(train.build_parser().parse_args(args)))
    saved = {"labels": state["labels"], "data": state["data"], "dir": out / "last"}
    load_data(config, World(), torch.device("cpu"), saved)  # the same list: accepted
    exclude.write_text(f"path\n{train_samples[1][0].relative_to(small_data)}\n")
    with pytest.raises(UserError, match="--exclude list changed"):
        load_data(config, World(), torch.device("cpu"), saved)
