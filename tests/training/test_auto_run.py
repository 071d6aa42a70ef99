"""--recipe auto end to end (training/auto.py): decisions printed and recorded, typed options kept, the
measurements leave no trace, a resumed run doesn't measure again; --lr-find; the model card of a run."""
from __future__ import annotations

import json
import re

import pytest
import torch
from helpers import make_pattern_folder, save_tiny_vit, stop_after_first_epoch

import train
from vitclassifier.reporting.intervals import small_set_note

pytestmark = pytest.mark.slow  # every test here trains a tiny ViT
OPTIONS = ["--batch-size", "8", "--num-workers", "0", "--no-rotate", "--no-color-jitter", "--no-crop",
           "--seed", "1", "--precision", "fp32"]
DECIDED = ["--lr", "1e-3", "--head-lr", "2e-3", "--epochs", "2", "--patience", "3", "--freeze-epochs", "0",
           "--warmup", "0.05", "--no-flip", "--label-smoothing", "0.05"]  # every option auto decides


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    return make_pattern_folder(tmp_path_factory.mktemp("small") / "data", per_class=20, size=32)


@pytest.fixture(scope="module")
def vit(tmp_path_factory):
    return save_tiny_vit(tmp_path_factory.mktemp("vit"), num_labels=10)


def args(out, data, model, *more):
    """--recipe auto, unless ``more`` says fixed (the last --recipe wins)."""
    return ["--data", str(data), "--model", str(model), "--output-dir", str(out), *OPTIONS,
            "--recipe", "auto", *more]


def info_of(out):
    return json.loads((out / "best" / "training_info.json").read_text())


def test_typed_options_are_kept_and_the_measurements_leave_no_trace(tmp_path, small_data, capsys):
    """Random weights (no probe head): auto with every decided option typed trains exactly --recipe fixed."""
    fixed, auto = tmp_path / "fixed", tmp_path / "auto"
    random = ["--no-pretrained", "--image-size", "32"]  # vit-tiny's architecture
    assert train.main(args(fixed, small_data, "vit-tiny", *random, "--recipe", "fixed", *DECIDED)) == 0
    assert "Automatic recipe" not in capsys.readouterr().out
    assert train.main(args(auto, small_data, "vit-tiny", *random, *DECIDED)) == 0
    out = capsys.readouterr().out
    assert "Automatic recipe, measured in" in out and "--lr 0.001: kept as you typed it" in out
    weights = "best/model.safetensors"
    assert (auto / weights).read_bytes() == (fixed / weights).read_bytes()
    decisions = info_of(auto)["recipe"]["decisions"]
    assert {d["option"] for d in decisions} == {"lr", "head_lr", "epochs", "patience", "freeze_epochs",
                                                "warmup", "no_flip", "label_smoothing"}
    assert all(d["reason"] == "kept as you typed it" for d in decisions)
    assert info_of(fixed)["recipe"] == {"recipe": "fixed"} and info_of(fixed)["pretrained"] is False


def test_auto_decides_records_and_starts_from_the_probe(tmp_path, small_data, vit, capsys):
    out = tmp_path / "run"
    assert train.main(args(out, small_data, vit, "--epochs", "1", "--no-flip")) == 0
    printed = capsys.readouterr().out
    info = info_of(out)
    decisions = {d["option"]: d for d in info["recipe"]["decisions"]}
    assert decisions["epochs"]["value"] == 1 and decisions["epochs"]["reason"] == "kept as you typed it"
    assert decisions["no_flip"]["value"] is True and decisions["no_flip"]["reason"] == "kept as you typed it"
    # 48 training images, 1 epoch: 20 steps of 8 images would cost more than a quarter of the run
    assert "no LR range test: 20 steps of 8 images would cost more than 25% of the fixed recipe's 1 epochs" \
        in printed and decisions["lr"]["reason"] == "no LR range test was run: the fixed recipe's"
    assert decisions["head_lr"]["value"] == decisions["lr"]["value"]  # LP-FT: the probe's head
    assert decisions["freeze_epochs"]["value"] == 0
    facts = info["recipe"]["facts"]
    assert facts["pretrained"] is True  # the measurement's probe accuracy; the record: epoch 0's (lpft.py)
    assert facts["probe_accuracy"] == pytest.approx(info["probe_val_acc"], abs=1e-6)
    assert 0 <= info["probe_val_acc"] <= 1 and facts["images_per_class_min"] == 16
    for d in decisions.values():  # printed, one line each
        assert f"--{d['option'].replace('_', '-')}" in printed and d["reason"] in printed
    state = torch.load(out / "last" / "training_state.pt", weights_only=True)
    assert state["options"]["lr"] == decisions["lr"]["value"] and state["options"]["recipe"] == "auto"
    assert "(95% CI " in printed.splitlines()[-1]  # 12 validation images: the summary gives the interval


def test_the_model_card_repeats_training_info(tmp_path, small_data, vit):
    from huggingface_hub import ModelCard
    out = tmp_path / "run"
    # 4 epochs of 24 steps: a range test of 24 steps is a quarter of it
    assert train.main(args(out, small_data, vit, "--epochs", "4", "--batch-size", "2")) == 0
    info = info_of(out)
    assert info["recipe"]["facts"]["lr_dip"] is not None  # the range test ran
    card = ModelCard.load(out / "best" / "README.md")
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "image-classification"
    results = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert results["accuracy"] == round(info["val_acc"], 4)
    assert results["f1"] == round(info["val_macro_f1"], 4)
    assert f"{info['probe_val_acc']:.1%}" in card.text
    assert "LR range test" in card.text


def test_a_resumed_auto_run_does_not_measure_again(tmp_path, small_data, vit, monkeypatch, capsys):
    out = tmp_path / "run"
    argv = args(out, small_data, vit, "--epochs", "2")
    stop_after_first_epoch(monkeypatch, argv)
    first = capsys.readouterr().out
    assert "Automatic recipe, measured in" in first
    recorded = torch.load(out / "last" / "training_state.pt", weights_only=True)["plan"]
    assert train.main(argv + ["--resume"]) == 0
    assert "Automatic recipe" not in capsys.readouterr().out
    info = info_of(out)
    assert info["recipe"] == recorded["recipe"] and info["probe_val_acc"] == recorded["probe_val_acc"]
    whole = tmp_path / "whole"  # the same run without the interruption: the same weights, bit for bit
    assert train.main(args(whole, small_data, vit, "--epochs", "2")) == 0
    for weights in ("best/model.safetensors", "last/model.safetensors"):
        assert (out / weights).read_bytes() == (whole / weights).read_bytes()
    assert info_of(whole)["epoch"] == info["epoch"] and info_of(whole)["weights"] == info["weights"]


def test_lp_ft_keeps_the_probe_model_when_fine_tuning_is_worse(tmp_path, small_data, vit, capsys):
    out = tmp_path / "run"
    assert train.main(args(out, small_data, vit, "--epochs", "1", "--lr", "1")) == 0  # typed: kept, ruinous
    printed = capsys.readouterr().out
    info = info_of(out)
    assert info["epoch"] == 0 and info["weights"] == "probe" and info["val_acc"] == info["probe_val_acc"]
    assert "epoch 0 (the linear probe's head, before fine-tuning)" in printed
    last = printed.splitlines()[-1]
    assert "Best epoch 0 (probe weights)" in last
    assert f"Linear probe alone: val acc {info['probe_val_acc']:.3f}, kept; fine-tuned: " in last
    assert (out / "best/model.safetensors").read_bytes() != (out / "last/model.safetensors").read_bytes()
    card = (out / "best/README.md").read_text()
    assert "Best epoch 0, selected by validation accuracy, probe weights." in card


def test_lp_ft_keeps_the_fine_tuned_model_when_better(tmp_path, small_data, vit, capsys):
    out = tmp_path / "run"
    assert train.main(args(out, small_data, vit, "--epochs", "1", "--lr", "1e-3", "--select-by", "loss",
                                  "--no-calibrate")) == 0  # best/ as last/ left it: no temperature folded
    info = info_of(out)
    assert info["epoch"] == 1 and info["weights"] == "raw" and info["val_loss"] < 1.0
    rows = (out / "metrics.csv").read_text().splitlines()
    assert len(rows) == 2  # epoch 0 is no row of metrics.csv: nothing was trained in it
    assert (out / "best/model.safetensors").read_bytes() == (out / "last/model.safetensors").read_bytes()
    last = capsys.readouterr().out.splitlines()[-1]
    probe, tuned = info["probe_val_acc"], info["val_acc"]
    assert f"Linear probe alone: val acc {probe:.3f}; fine-tuned: {tuned:.3f}, kept." in last


def test_folds_report_the_spread_and_leave_the_training_as_it_was(tmp_path, small_data, vit, capsys):
    plain, folds = tmp_path / "plain", tmp_path / "folds"
    fixed = ["--epochs", "1", "--recipe", "fixed"]
    assert train.main(args(plain, small_data, vit, *fixed)) == 0
    capsys.readouterr()
    assert train.main(args(folds, small_data, vit, *fixed, "--folds", "3")) == 0
    printed = capsys.readouterr().out
    summary = info_of(folds)["folds"]
    assert summary["folds"] == 3 and summary["images"] == 60  # the training and validation splits
    assert summary["method"] == "linear probe on the pre-trained features"
    for mean, low, high in [summary["acc"], summary["macro_f1"], *summary["recall"]]:
        assert 0 <= low <= mean <= high <= 1
    assert len(summary["recall"]) == 3 and "folds" not in info_of(plain)
    assert "3-fold cross-validation, a linear probe" in printed and "recall, weakest classes first" in printed
    assert "- 3-fold cross-validation: accuracy" in (folds / "best/README.md").read_text()
    weights = "best/model.safetensors"
    assert (folds / weights).read_bytes() == (plain / weights).read_bytes()


@pytest.mark.parametrize("more, refusal", [
    (["--folds", "21"], "--folds 21: every class needs at least 21 images"),
    (["--folds", "1"], "--folds 1: cross-validation needs at least 2 folds"),
    (["--folds", "3", "--no-pretrained", "--image-size", "32"], "--folds 3 needs pre-trained weights"),
])
def test_folds_refused_before_any_work(tmp_path, small_data, vit, capsys, more, refusal):
    out = tmp_path / "run"
    model = "vit-tiny" if "--no-pretrained" in more else vit
    assert train.main(args(out, small_data, model, "--recipe", "fixed", *more)) == 2
    assert refusal in capsys.readouterr().err and not out.exists()


def test_an_output_folder_that_would_be_refused_is_refused_before_the_measurements(tmp_path, small_data, vit,
                                                                                  capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert train.main(args(out, small_data, vit, "--epochs", "1")) == 2
    captured = capsys.readouterr()
    assert "holds files this tool did not write (notes.txt)" in captured.err
    assert "Automatic recipe" not in captured.out and sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_lr_find_prints_a_suggestion_and_saves_the_curve(tmp_path, small_data, vit, capsys):
    out = tmp_path / "lr"
    assert train.main(args(out, small_data, vit, "--lr-find")) == 0
    printed = capsys.readouterr().out
    assert "Suggested peak LR" in printed and "head LR" in printed
    steps = int(re.search(r"LR range test: (\d+) steps of 8 training images", printed)[1])
    assert steps > 15  # --recipe auto would afford 15 here (a quarter of 10 epochs); the sweep may end early
    assert (out / "lr_find.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (out / "best").exists()  # nothing trained


def test_small_validation_sets_get_an_interval():
    assert small_set_note(0.83, 60) == " (95% CI 72%-91% on 60 images)"
    assert small_set_note(0.83, 5000) == ""
