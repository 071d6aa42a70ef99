"""train.py --evaluate (vitclassifier/evaluation.py): a checkpoint or an export scored on another folder,
its tables written; a folder with other classes refused."""
from __future__ import annotations

import csv
import shutil

import pytest
from helpers import make_pattern_folder
from PIL import Image

import train


@pytest.mark.slow
def test_evaluate_without_model_scores_checkpoints_best_or_asks_for_one(trained_run, tmp_path, monkeypatch,
                                                                       capsys):
    data = make_pattern_folder(tmp_path / "data", per_class=3)
    monkeypatch.chdir(tmp_path)
    assert train.main(["--evaluate", "--data", str(data)]) == 2
    assert "--evaluate needs --model" in capsys.readouterr().err
    shutil.copytree(trained_run / "best", tmp_path / "checkpoints" / "best")
    assert train.main(["--evaluate", "--data", str(data), "--output-dir", str(tmp_path / "scores")]) == 0
    assert "Scoring checkpoints/best" in capsys.readouterr().out
    assert (tmp_path / "scores" / "per_class.csv").is_file()


@pytest.mark.slow
def test_evaluate_scores_a_checkpoint_on_a_folder(trained_run, pattern_data, tmp_path, capsys):
    out = tmp_path / "scores"
    assert train.main(["--evaluate", "--model", str(trained_run / "best"), "--data", str(pattern_data),
                       "--output-dir", str(out)]) == 0  # default --num-workers: chosen for the device
    printed = capsys.readouterr().out
    assert "1200 images" in printed and "acc" in printed
    for name in ("confusion_matrix.png", "mistakes.png", "per_class.csv", "confusion_matrix.csv"):
        assert (out / name).stat().st_size > 100
    with open(out / "per_class.csv", newline="") as handle:
        assert sum(int(r["support"]) for r in csv.DictReader(handle)) == 1200


@pytest.mark.slow
def test_evaluate_refuses_a_folder_with_other_classes(trained_run, tmp_path, capsys):
    for name in ("horizontal", "plain", "diagonal"):
        (tmp_path / "other" / name).mkdir(parents=True)
        Image.new("RGB", (32, 32)).save(tmp_path / "other" / name / "a.png")
    assert train.main(["--evaluate", "--model", str(trained_run / "best"),
                       "--data", str(tmp_path / "other")]) == 2
    err = capsys.readouterr().err
    assert "not in the checkpoint: diagonal" in err and "missing from the folder: vertical" in err


def test_train_evaluate_scores_an_export_like_its_checkpoint(openvino_int8_export, trained_run, pattern_data,
                                                             tmp_path, capsys):
    import train
    scores = {}
    for name, model in (("checkpoint", trained_run / "best"), ("int8", openvino_int8_export[0])):
        assert train.main(["--evaluate", "--model", str(model), "--data", str(pattern_data),
                           "--output-dir", str(tmp_path / name),
                           "--precision", "fp32" if name == "checkpoint" else "auto"]) == 0
        printed = capsys.readouterr().out
        assert "1200 images" in printed and (tmp_path / name / "confusion_matrix.png").is_file()
        scores[name] = float(printed.split(" acc ")[1].split()[0])
    assert scores["checkpoint"] > 0.5 and abs(scores["int8"] - scores["checkpoint"]) <= 0.01

