"""Model files from elsewhere (model/trust.py): every damaged or hostile checkpoint, export and training
state is made here from a small good one, and must end in one ``error: cannot load ...: reason`` line
(exit 2), or in the right answer. Names from model files are text on the terminal and in pictures;
a training state can't pick where our data goes. The web page's part is in
scenarios/test_untrusted_network.py."""
from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest
import torch
from helpers import CLASSES, one_line_refusal, write_small_images
from safetensors.torch import load_file, save_file

import export
import predict
import train
from vitclassifier.errors import UserError


@pytest.fixture(scope="module")
def checkpoint(tiny_vit, tmp_path_factory) -> Path:
    """A good checkpoint, saved as train.py saves one: the tiny ViT with a (random) 3-class head."""
    from vitclassifier.model.checkpoint import save_model
    from vitclassifier.model.vit import create_model
    model, prep = create_model(str(tiny_vit), CLASSES)
    out = tmp_path_factory.mktemp("good") / "best"
    save_model(model, prep, out, info={"temperature": 1.0})
    return out


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return write_small_images(tmp_path_factory.mktemp("images"))


def copy_with(source: Path, target: Path, change) -> Path:
    shutil.copytree(source, target)
    change(target)
    return target


def edit_json(name: str, **fields):
    def change(folder: Path) -> None:
        data = json.loads((folder / name).read_text())
        (folder / name).write_text(json.dumps({**data, **fields}))
    return change


def edit_tensors(edit):
    def change(folder: Path) -> None:
        path = folder / "model.safetensors"
        save_file(edit(load_file(path)), path, metadata={"format": "pt"})
    return change


def edit_bytes(edit):
    def change(folder: Path) -> None:
        path = folder / "model.safetensors"
        path.write_bytes(edit(path.read_bytes()))
    return change


def write(name: str, text: str):
    return lambda folder: (folder / name).write_text(text)


CHECKPOINT_DAMAGE = {
    "missing head": (edit_tensors(lambda t: {k: v for k, v in t.items() if not k.startswith("classifier")}),
                     "classifier.weight"),
    "renamed keys": (edit_tensors(lambda t: {f"old.{k}": v for k, v in t.items()}), "missing: "),
    "3 blocks for 2": (edit_json("config.json", num_hidden_layers=3), "vit.layers.2."),
    "100000 blocks": (edit_json("config.json", num_hidden_layers=100000), "num_hidden_layers 100000"),
    "huge width": (edit_json("config.json", hidden_size=2**20), "hidden_size"),
    "truncated weights": (edit_bytes(lambda b: b[: len(b) // 2]), "model.safetensors is damaged"),
    "empty weights": (edit_bytes(lambda b: b""), "model.safetensors is damaged"),
    "huge header": (edit_bytes(lambda b: struct.pack("<Q", 2**60) + b[8:]), "model.safetensors is damaged"),
    "info not JSON": (write("training_info.json", "{temperature: 2"), "training_info.json is not JSON"),
    "info a list": (write("training_info.json", "[1.5]"), "training_info.json must hold a JSON object"),
    "string temperature": (write("training_info.json", '{"temperature": "1.5"}'), "temperature"),
    "zero temperature": (write("training_info.json", '{"temperature": 0}'), "temperature"),
    "negative temperature": (write("training_info.json", '{"temperature": -1}'), "temperature"),
    "keys 0, 1, 5": (edit_json("config.json", id2label={"0": "a", "1": "b", "5": "c"}), "0, 1, 5"),
    "a name not text": (edit_json("config.json", id2label={"0": "a", "1": 7, "2": "c"}), "strings"),
    "duplicate names": (edit_json("config.json", id2label={"0": "cat", "1": "cat", "2": "dog"}), "'cat'"),
    "negative crop": (edit_json("preprocessor_config.json", crop_pct=-0.5), "crop_pct"),
    "2 means": (edit_json("preprocessor_config.json", image_mean=[0.5, 0.5]), "mean"),
    "zero std": (edit_json("preprocessor_config.json", image_std=[0.5, 0.0, 0.5]), "std"),
    "size 0": (edit_json("preprocessor_config.json", size={"shortest_edge": 0}), "size"),
    "size 100000": (edit_json("preprocessor_config.json", size={"shortest_edge": 100000}), "size"),
    "config not JSON": (write("config.json", "{"), "config.json is not JSON"),
}


def test_the_good_checkpoint_predicts(checkpoint, images, capsys):
    """The checks refuse nothing that is right (else every refusal below would prove nothing)."""
    assert predict.main(["--model", str(checkpoint), "--image", str(images), "--device", "cpu"]) == 0
    assert "error" not in capsys.readouterr().err


@pytest.mark.parametrize("case", CHECKPOINT_DAMAGE)
def test_a_damaged_checkpoint_is_one_line(case, checkpoint, images, tmp_path, capsys):
    change, fragment = CHECKPOINT_DAMAGE[case]
    target = copy_with(checkpoint, tmp_path / "ckpt", change)
    code = predict.main(["--model", str(target), "--image", str(images), "--device", "cpu"])
    one_line_refusal(code, capsys.readouterr().err, fragment)


@pytest.mark.parametrize("command", ["export", "evaluate", "fine-tune"])
def test_missing_weights_are_refused_by_every_command(command, checkpoint, images, tmp_path, capsys):
    """export.py, train.py --evaluate and fine-tuning from --model DIR load through the same checks;
    fine-tuning may lose the head (it is replaced anyway), but not a block of the backbone."""
    block = edit_tensors(lambda t: {k: v for k, v in t.items() if ".layer.1." not in k})  # saved names
    target = copy_with(checkpoint, tmp_path / "ckpt", block)
    data = tmp_path / "data"
    for name in CLASSES:
        shutil.copytree(images, data / name)
    if command == "export":
        code = export.main(["--model", str(target), "--format", "onnx", "--out", str(tmp_path / "m.onnx")])
    else:
        options = ["--evaluate"] if command == "evaluate" else ["--epochs", "1", "--precision", "fp32"]
        code = train.main([*options, "--model", str(target), "--data", str(data), "--device", "cpu",
                           "--output-dir", str(tmp_path / "out")])
    one_line_refusal(code, capsys.readouterr().err, "safetensors file lacks", "layers.1.")
    assert not (tmp_path / "m.onnx").exists()


def test_fine_tuning_may_replace_only_the_head(tiny_vit, tmp_path):
    from vitclassifier.model.vit import create_model
    headless = copy_with(tiny_vit, tmp_path / "headless", edit_tensors(
        lambda t: {k: v for k, v in t.items() if not k.startswith("classifier")}))
    model, _ = create_model(str(headless), CLASSES)  # a backbone without a head: the usual start
    assert model.classifier.out_features == 3
    deeper = copy_with(tiny_vit, tmp_path / "deeper", edit_json("config.json", num_hidden_layers=3))
    with pytest.raises(UserError, match="cannot load model .*vit.layers.2"):
        create_model(str(deeper), CLASSES)


def hub_snapshot(cache: Path, repo: str, source: Path, weights: list[str]) -> None:
    """``source``'s files laid out as huggingface_hub caches a download of ``repo``."""
    snapshot = cache / f"models--{repo.replace('/', '--')}" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    for name in ["config.json", "preprocessor_config.json", *weights]:
        shutil.copy(source / name, snapshot / name)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)


def test_a_cached_hub_snapshot_with_only_pickled_weights_is_refused(tiny_vit, tmp_path, monkeypatch):
    import huggingface_hub.constants

    from vitclassifier.model.vit import create_model
    pickled = tmp_path / "pickled"
    shutil.copytree(tiny_vit, pickled)
    marker = tmp_path / "ran"
    torch.save({"weights": load_file(tiny_vit / "model.safetensors"), "payload": Payload(marker)},
               pickled / "pytorch_model.bin")
    cache = tmp_path / "hub"
    hub_snapshot(cache, "someone/good", tiny_vit, ["model.safetensors"])
    hub_snapshot(cache, "someone/pickled", pickled, ["pytorch_model.bin"])
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model, _ = create_model("someone/good", CLASSES)  # the cache is laid out right
    assert model.classifier.out_features == 3
    with pytest.raises(UserError, match="cannot load model someone/pickled: it has no model.safetensors"):
        create_model("someone/pickled", CLASSES)
    assert not marker.exists()


class Payload:
    """Unpickling this runs a shell command that leaves ``marker`` behind."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        import os
        return os.system, (f"touch {self.marker}",)


HOSTILE = ["\x1b]0;owned\x07red\x1b[31m", "two\nlines", "x^2_$\\frac$", "<b>bold</b>"]


def test_hostile_names_reach_the_terminal_escaped(checkpoint, images, tmp_path, capsys):
    names = HOSTILE[:3]
    target = copy_with(checkpoint, tmp_path / "ckpt", edit_json(
        "config.json", id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)}))
    named = images.parent / "new\nline\x1b[2J.png"
    shutil.copy(images / "0.png", named)
    assert predict.main(["--model", str(target), "--image", str(named), "--device", "cpu",
                         "--top-k", "3"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\\x1b]0;owned\\x07red" in out and "two\\nlines" in out
    assert len(out.strip().splitlines()) == 4  # the file, then one line per label
    assert predict.main(["--model", str(target), "--image", str(named), "--device", "cpu",
                         "--json", "-"]) == 0
    report = json.loads(capsys.readouterr().out)  # JSON keeps the names as they are
    assert {p["label"] for p in report["results"][0]["predictions"]} <= set(HOSTILE)


def test_the_audit_lists_hostile_file_names_escaped(images, tmp_path):
    from vitclassifier.data.audit import audit_dataset, format_report
    paths = [tmp_path / "a\nfake: line.png", tmp_path / "b\x1b[31m.png", tmp_path / "c\rd.png"]
    for path in paths[:2]:
        shutil.copy(images / "0.png", path)  # two copies: listed as duplicates
    paths[2].write_text("not an image")  # listed as unreadable
    report = audit_dataset(["x\ny", "z"], [(paths[0], 0), (paths[2], 1)], [(paths[1], 0)], image_size=None)
    text = format_report(report)
    assert "\x1b" not in text and "\r" not in text
    assert "a\\nfake: line.png" in text and "b\\x1b[31m.png" in text and "c\\rd.png" in text
    assert not any(line.startswith("fake: line") for line in text.splitlines())


def test_names_are_drawn_literally_not_as_mathtext(images, tmp_path):
    """An unfinished mathtext command fails matplotlib's parser, so these pictures are drawn only
    when the names are taken as plain text."""
    from vitclassifier.reporting.plots import write_confusion, write_mistakes, write_predictions
    labels = ["x^2_$\\frac$", "$\\sqrt{$", "plain"]
    write_confusion(torch.eye(3), labels, tmp_path / "confusion.png")
    write_mistakes([(images / "0.png", 0, 1, 0.9)], labels, tmp_path / "mistakes.png")
    named = images.parent / "$\\frac$.png"
    shutil.copy(images / "0.png", named)
    predictions = [{"label": name, "confidence": 0.3} for name in labels]
    write_predictions([{"path": str(named), "predictions": predictions}], tmp_path / "predictions.png")
    for picture in ("confusion", "mistakes", "predictions"):
        assert (tmp_path / f"{picture}.png").stat().st_size > 1000


@pytest.fixture
def interrupted(checkpoint, images, tiny_vit, tmp_path) -> tuple[Path, dict]:
    """A run folder whose last/ holds the good checkpoint, and a plausible training state for it."""
    from vitclassifier.config import TrainConfig
    from vitclassifier.training.resume import saved_options
    for name in CLASSES:
        shutil.copytree(images, tmp_path / "data" / name)
    run = tmp_path / "run"
    shutil.copytree(checkpoint, run / "last")
    config = TrainConfig.from_options({"data": str(tmp_path / "data"), "model": str(tiny_vit),
                                       "output_dir": str(run), "epochs": 3, "batch_size": 4})
    best = {"epoch": 1, "score": [0.5, -1.0], "select_by": "accuracy", "weights": "raw", "val_acc": 0.5,
            "val_loss": 1.0, "val_macro_f1": 0.4}
    return run, {"epoch": 2, "step": 0, "totals": {"loss": 0.0, "top1": 0, "count": 0, "lr": 0.0},
                 "labels": list(CLASSES), "data": "0" * 40, "options": saved_options(config), "best": best,
                 "stale_epochs": 0, "bad_files": {}, "optimizer": {}, "scheduler": {}, "scaler": {}}


def with_options(**options):
    return lambda state: {**state, "options": {**state["options"], **options}}


def saved_bytes(edit):
    def change(state: dict) -> bytes:
        import io
        buffer = io.BytesIO()
        torch.save(state, buffer)
        return edit(buffer.getvalue())
    return change


STATE_DAMAGE = {
    "truncated": (saved_bytes(lambda b: b[: len(b) // 2]), "it is damaged"),
    "empty": (saved_bytes(lambda b: b""), "it is damaged"),
    "{}": (lambda state: {}, "it has no "),
    "options not a dict": (lambda state: {**state, "options": ["--epochs", "3"]}, "its options is a list"),
    "batch size as text": (with_options(batch_size="4"), "--batch-size '4' is not int"),
    "batch size -5": (with_options(batch_size=-5), "--batch-size must be at least 1"),
    "a flag as text": (with_options(no_pretrained="yes"), "--no-pretrained"),
    "unknown precision": (with_options(precision="fp99"), "--precision: choose from"),
    "epoch as text": (lambda state: {**state, "epoch": "2"}, "its epoch is a str"),
    "labels twice": (lambda state: {**state, "labels": ["a", "a", "b"]}, "more than once"),
    "best score as text": (lambda state: {**state, "best": {**state["best"], "val_acc": "high"}}, "scores"),
}


@pytest.mark.parametrize("case", STATE_DAMAGE)
def test_a_damaged_training_state_is_one_line(case, interrupted, capsys):
    run, state = interrupted
    edit, fragment = STATE_DAMAGE[case]
    damaged = edit(state)
    path = run / "last" / "training_state.pt"
    path.write_bytes(damaged) if isinstance(damaged, bytes) else torch.save(damaged, path)
    one_line_refusal(train.main(["--resume", str(run)]), capsys.readouterr().err, "training state", fragment)


def test_a_pickle_payload_in_the_training_state_is_one_line_and_never_runs(interrupted, tmp_path, capsys):
    run, state = interrupted
    marker = tmp_path / "ran"
    torch.save({**state, "extra": Payload(marker)}, run / "last" / "training_state.pt")
    one_line_refusal(train.main(["--resume", str(run)]), capsys.readouterr().err, "could run code")
    assert not marker.exists()


def test_resume_takes_no_session_option_from_the_save(interrupted, capsys):
    """A run folder from elsewhere can't pick the tracking server (nor device, workers, memory): those
    come from this command line only. The run's own options are restored, and said so."""
    from vitclassifier.config import TrainConfig
    from vitclassifier.training.resume import prepare_resume
    run, state = interrupted
    planted = {"track": "mlflow", "tracking_uri": "http://127.0.0.1:9/steal", "device": "cuda",
               "num_workers": 64, "cache_mb": 10**6, "compile": True, "precision": "fp16"}
    torch.save(with_options(**planted)(state), run / "last" / "training_state.pt")
    config = TrainConfig.from_options({"output_dir": str(run), "resume": "", "precision": "bf16"})
    resumed, saved = prepare_resume(config, {"output_dir", "resume", "precision"})
    runtime = resumed.runtime
    assert (runtime.track, runtime.tracking_uri) == (None, None)
    assert (runtime.device, runtime.compile) == ("auto", False)
    assert (resumed.data.num_workers, resumed.data.cache_mb, runtime.precision) == (None, 4096, "bf16")
    assert (resumed.recipe.epochs, resumed.data.batch_size) == (3, 4)  # the run's own options: restored
    assert saved["dir"] == run / "last"
    out = capsys.readouterr().out
    assert "restored" in out and "--epochs 3" in out and "--batch-size 4" in out
    assert "track" not in out and "127.0.0.1" not in out
