"""benchmarks/speed.py runs end to end on a tiny model and reports every row it promises. (Its
figures are for people to read: nothing here asserts a speed.)"""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest
from helpers import ROOT

pytestmark = pytest.mark.slow  # trains and predicts in a process of its own


def test_speed_benchmark_runs_every_path_and_reports_the_figures(tmp_path):
    out = tmp_path / "figures.json"
    command = [sys.executable, str(ROOT / "benchmarks" / "speed.py"), "--model", "vit-tiny",
               "--image-size", "64", "--train-images", "24", "--epochs", "1", "--inference-images", "8",
               "--single-images", "2", "--photo-size", "96", "--skip", "compile", "--work", str(tmp_path),
               "--json", str(out)]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr[-2000:]
    figures = json.loads(out.read_text())
    assert figures["peak_bf16"] > 0 and figures["peak_fp32"] > 0 and figures["forward_flops"] > 0
    for run in ("ours", "ours_fp32", "trainer"):
        assert 0 < figures[run]["train_seconds"] < figures[run]["seconds"]
        assert 0 <= figures[run]["val_acc"] <= 1
    expected = {"ours fp32", "ours (default)", "ours --quantize", "pipeline"}
    if importlib.util.find_spec("openvino") and importlib.util.find_spec("nncf"):
        expected |= {"ours --runtime openvino", "ours openvino-int8 export"}
        assert (tmp_path / "ours" / "best.openvino-int8.xml").is_file() and figures["export_s"] > 0
    assert set(figures["inference"]) == expected
    for name, result in figures["inference"].items():
        assert result["single_ms"] > 0 and result["batch_per_s"] > 0, name
        assert 0 <= result["agreement"] <= 1 and (result["agreement"] * 8).is_integer(), name  # of 8 images
    # transformers' pipeline runs the same fp32 weights with the same preprocessing: the same top-1
    assert figures["inference"]["pipeline"]["agreement"] == 1.0
    assert "vs Trainer" in finished.stdout and "vs pipeline" in finished.stdout
