"""Training on imbalanced classes end to end: class weights, the balanced sampler and model selection by
macro-F1 together (the parts alone: test_recipe.py, test_sampling.py, reporting/test_metrics.py)."""
from __future__ import annotations

import json

import pytest
from helpers import TRAIN_OPTIONS, make_pattern_folder, read_rows

import train


@pytest.mark.slow
def test_imbalanced_training_with_weights_sampler_and_macro_f1_selection(tmp_path, tiny_vit):
    data = make_pattern_folder(tmp_path / "data", per_class=60)
    for extra in sorted((data / "plain").iterdir())[12:]:  # plain: 12 images, the others 60
        extra.unlink()
    out = tmp_path / "run"
    assert train.main(["--data", str(data), "--model", str(tiny_vit), "--output-dir", str(out),
                       *TRAIN_OPTIONS, "--epochs", "3", "--class-weights", "auto", "--balanced-sampler",
                       "--select-by", "macro-f1"]) == 0
    rows = read_rows(out / "metrics.csv")
    info = json.loads((out / "best" / "training_info.json").read_text())
    best_row = max(rows, key=lambda r: (float(r["val_macro_f1"]), -float(r["val_loss"])))
    assert info["select_by"] == "macro-f1" and info["epoch"] == int(best_row["epoch"])
    assert info["val_macro_f1"] == pytest.approx(float(best_row["val_macro_f1"]), abs=1e-6)
