"""Every option is declared once, as a config field: the commands' parsers, the checks and the option
tables of docs/options.md all come from the fields (vitclassifier/options.py). Run as a script, this
prints docs/options.md as the fields give it."""
from __future__ import annotations

import argparse
import dataclasses

import pytest
from helpers import ROOT

import export
import predict
import train
from vitclassifier.config import PRESET_NAMES, TrainCommand, TrainConfig
from vitclassifier.data.options import CheckDataConfig
from vitclassifier.errors import UserError
from vitclassifier.export.check import ExportConfig
from vitclassifier.inference.options import AppConfig, PredictConfig
from vitclassifier.model.vit import PRESETS
from vitclassifier.options import build_parser, default_of, dest, flags, options_of, reference

COMMANDS = {"classifier.py": (CheckDataConfig,), "train.py": (TrainConfig, TrainCommand),
            "predict.py": (PredictConfig,), "export.py": (ExportConfig,), "app.py": (AppConfig,)}
INTRO = """# Options reference

Every option of every command, with its default, written from the dataclass fields that declare
it (`vitclassifier/options.py`); `tests/shared/test_options.py` fails when this page and the fields
disagree (`PYTHONPATH=.:tests python tests/shared/test_options.py > docs/options.md` writes the page)."""


def options_page() -> str:
    return f"{INTRO}\n\n{reference(COMMANDS)}\n"


def parser_of(command: str) -> argparse.ArgumentParser:
    if command in ("app.py", "classifier.py"):  # they build theirs in parse_args and main
        return build_parser("", *COMMANDS[command])
    return {"train.py": train, "predict.py": predict, "export.py": export}[command].build_parser()


@pytest.mark.parametrize("command", COMMANDS)
def test_each_parser_is_its_fields(command):
    """Same options, in the same order, with the fields' defaults, choices and help."""
    actions = [a for a in parser_of(command)._actions if a.dest != "help"]
    fields = options_of(*COMMANDS[command])
    assert [a.option_strings for a in actions] == [list(flags(f)) for f, _ in fields]
    for action, (f, _) in zip(actions, fields):
        declared = (dest(f), f.metadata["help"], f.metadata.get("choices"))
        assert (action.dest, action.help, action.choices) == declared
        assert action.required or action.default == default_of(f)


def test_train_py_help_keeps_its_groups_and_flags():
    help_text = train.build_parser().format_help()
    assert "fine-tuning recipe:" in help_text and "validation, imbalance and calibration:" in help_text
    args = train.build_parser().parse_args(["--no-calibrate", "--no-crop", "--resume"])
    assert (args.calibrate, args.no_crop, args.resume) == (False, True, "")


def test_the_checks_come_from_the_fields():
    with pytest.raises(UserError, match="--epochs must be at least 1"):
        TrainConfig().replace(epochs=0)
    with pytest.raises(UserError, match="--image-size must be from 16 to 4096"):
        TrainConfig().replace(image_size=8)
    assert PredictConfig(image=["a.jpg"], top_k=0).problems() == ["--top-k must be at least 1"]
    assert ExportConfig(format="onnx", threads=0).problems() == ["--threads must be at least 1"]
    assert AppConfig(port=0).problems() == ["--port must be from 1 to 65535"]
    assert CheckDataConfig(val_split=0.0).problems() == ["--val-split must be between 0 and 1, got 0.0"]


def test_types_are_checked_against_the_annotations():
    assert PredictConfig(image=["a.jpg"], top_k=True).problems() == ["--top-k 'True' is not int"]
    config = dataclasses.replace(TrainConfig(), recipe=dataclasses.replace(TrainConfig().recipe, lr="x"))
    assert config.problems() == ["--lr 'x' is not float or None"]


def test_the_model_help_names_the_presets():
    assert PRESET_NAMES == tuple(PRESETS)


def test_the_option_tables_are_the_fields():
    page = (ROOT / "docs" / "options.md").read_text()
    assert page == options_page(), ("docs/options.md differs from the fields: PYTHONPATH=.:tests "
                                    "python tests/shared/test_options.py > docs/options.md")


if __name__ == "__main__":
    print(options_page(), end="")


def test_flags_show_no_default_in_help(capsys):
    help_text = train.build_parser().format_help()
    assert "--no-calibrate" in help_text and "(default: True)" not in help_text
    assert "(default: False)" not in help_text and "(default: 42)" in help_text

