"""train.py's command line: bad options are refused before anything runs, with argparse's exit code 2;
an output folder that cannot be written stops the run before training."""
from __future__ import annotations

import pytest
from helpers import run_args

import train
from vitclassifier.config import TrainConfig


@pytest.mark.parametrize("argv, message", [
    (["--epochs", "0"], "--epochs must be at least 1"),
    (["--batch-size", "0"], "--batch-size must be at least 1"),
    (["--val-split", "1.5"], "--val-split must be between 0 and 1"),
    (["--lr", "-1"], "--lr must be positive"),
    (["--freeze", "half"], "use none, backbone or a number"),
    (["--precision", "fp8"], "invalid choice"),
])
def test_bad_training_options_are_refused_up_front(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train.parse_args(argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_parse_args_gives_the_options_the_config_and_what_was_typed():
    args, config, given = train.parse_args(["--epochs", "3", "--data", "photos", "--freeze", "backbone"])
    assert isinstance(config, TrainConfig) and args.epochs == config.recipe.epochs == 3
    assert str(config.data.folder) == "photos" and config.model.freeze == "backbone"
    assert given == {"epochs", "data", "freeze"}  # the others were left at their defaults


@pytest.mark.slow
def test_unwritable_output_dir_fails_before_training(tmp_path, tiny_vit, pattern_data, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert train.main(run_args(blocker / "out", pattern_data, tiny_vit)) == 2
    assert "cannot write to --output-dir" in capsys.readouterr().err
