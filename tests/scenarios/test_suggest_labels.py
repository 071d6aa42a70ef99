"""classifier.py --suggest-labels end to end with the tiny trained model: the suggestions, the
contact sheet, the history of rounds, near-duplicates of labelled images left out, the folder rules."""
from __future__ import annotations

import json
import shutil

import pytest
from helpers import CLASSES, read_rows

import classifier

pytestmark = pytest.mark.slow  # runs the model over a pool


@pytest.fixture()
def pool_and_labelled(pattern_data, tmp_path):
    """A flat pool of 8 images per class plus a copy of a labelled one; 4 labelled images per class."""
    pool, labelled = tmp_path / "pool", tmp_path / "labelled"
    pool.mkdir()
    for name in CLASSES:
        (labelled / name).mkdir(parents=True)
        for i in range(4):
            shutil.copy(pattern_data / name / f"{name}_{i:03d}.png", labelled / name)
        for i in range(100, 108):
            shutil.copy(pattern_data / name / f"{name}_{i:03d}.png", pool)
    shutil.copy(labelled / CLASSES[0] / f"{CLASSES[0]}_002.png", pool / "copy_of_a_labelled_image.png")
    return pool, labelled


def test_suggestions_rounds_and_duplicates_left_out(trained_run, pool_and_labelled, tmp_path, capsys):
    pool, labelled = pool_and_labelled
    out = tmp_path / "suggestions"
    command = ["--suggest-labels", str(pool), "--model", str(trained_run / "best"), "--labelled",
               str(labelled), "--budget", "6", "--suggest-out", str(out), "--device", "cpu"]
    assert classifier.main(command) == 0
    rows = read_rows(out / "suggestions.csv")
    assert len(rows) == 6 and len({row["path"] for row in rows}) == 6
    assert all(row["path"].startswith("../pool/") and row["suggested_label"] in CLASSES for row in rows)
    assert "../pool/copy_of_a_labelled_image.png" not in {row["path"] for row in rows}
    assert all(0 < float(row["confidence"]) <= 1 and row["why"] for row in rows)
    uncertainties = [float(row["uncertainty"]) for row in rows]
    assert uncertainties[0] >= sorted(uncertainties)[len(rows) // 2]  # the first pick is among the unsure
    facts = json.loads((out / "suggestions.json").read_text())
    assert facts["classes"] == CLASSES and facts["left_out_as_duplicates"] >= 1
    assert (out / "suggestions.png").stat().st_size > 5_000 and list(out.glob("embeddings-*.npz"))
    info = json.loads((trained_run / "best" / "training_info.json").read_text())
    history = read_rows(out / "rounds.csv")
    assert len(history) == 1 and float(history[0]["accuracy"]) == round(info["val_acc"], 4)
    assert float(history[0]["low"]) <= float(history[0]["accuracy"]) <= float(history[0]["high"])
    assert (out / "rounds.png").is_file() and "Suggested 6 of 25" in capsys.readouterr().out
    assert classifier.main(command) == 0  # the same model again: no second round
    assert len(read_rows(out / "rounds.csv")) == 1


def test_outputs_never_go_into_the_pool_nor_over_a_file_not_ours(trained_run, pool_and_labelled, tmp_path,
                                                                  capsys):
    pool, _ = pool_and_labelled
    base = ["--suggest-labels", str(pool), "--model", str(trained_run / "best")]
    assert classifier.main([*base, "--suggest-out", str(pool / "out")]) == 2
    assert "would write into the pool folder" in capsys.readouterr().err
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "suggestions.csv").write_text("mine\n")
    assert classifier.main([*base, "--suggest-out", str(theirs)]) == 2
    assert "did not write" in capsys.readouterr().err and (theirs / "suggestions.csv").read_text() == "mine\n"
