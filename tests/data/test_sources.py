"""--data in its other forms, built offline in temp folders over the same generated images: a CSV label
file, a datasets.Dataset saved to disk, a parquet file, and tar shards written by --to-shards. Each
trains one epoch of the tiny ViT; label maps and validation metrics must equal the class-folder run's."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import CLASSES, COMPARED, ROOT, assert_same_metrics, make_pattern_folder, read_rows, run_args

from vitclassifier.data.folders import load_splits
from vitclassifier.errors import UserError

datasets = pytest.importorskip("datasets")
pytest.importorskip("webdataset")

ONE_EPOCH = ["--epochs", "1", "--val-split", "0.25"]
VAL_COMPARED = ("val_loss", "val_acc", "val_top3", "val_macro_f1")


def train_on(data, out, model, *extra) -> int:
    import train
    return train.main([*run_args(out, data, model), *ONE_EPOCH, *map(str, extra)])


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory, tiny_vit):
    """The reference: the class folder, trained one epoch; and its split."""
    root = make_pattern_folder(tmp_path_factory.mktemp("forms") / "images", per_class=12, size=32)
    out = root.parent / "folder-run"
    assert train_on(root, out, tiny_vit) == 0
    return root, out, load_splits(root, 0.25, 1)


def labels_of(run) -> list[str]:
    return json.loads((run / "best" / "training_info.json").read_text())["labels"]


def assert_same_validation(a, b) -> None:
    first, second = read_rows(a / "metrics.csv"), read_rows(b / "metrics.csv")
    assert [[r[k] for k in VAL_COMPARED] for r in first] == [[r[k] for k in VAL_COMPARED] for r in second]


def test_a_label_file_trains_as_the_folder_and_skips_missing_images(folder_run, tiny_vit, capsys):
    root, reference, (labels, train, val) = folder_run
    rows = ["filename,label"] + [f"{p.relative_to(root)},{labels[i]}" for p, i in train + val]
    csv = root / "labels.csv"
    csv.write_text("\n".join(rows + ["gone/nothing.png,plain", "gone/nothing2.png,plain"]) + "\n")
    out = root.parent / "csv-run"
    assert train_on(csv, out, tiny_vit) == 0
    err = capsys.readouterr().err
    assert err.count("do not exist and are skipped") == 1 and "gone/nothing.png" in err
    assert labels_of(out) == labels_of(reference) == CLASSES
    first, second = read_rows(reference / "metrics.csv"), read_rows(out / "metrics.csv")
    assert [[r[k] for k in COMPARED] for r in first] == [[r[k] for k in COMPARED] for r in second]
    info = json.loads((out / "best" / "training_info.json").read_text())
    assert info["data"] == {"form": "labels", "data": str(csv)}


def hf_split(samples, labels):
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=labels)})
    return datasets.Dataset.from_dict({"image": [str(p) for p, _ in samples],
                                       "label": [i for _, i in samples]}, features=features)


def test_a_saved_dataset_and_parquet_train_as_the_folder(folder_run, tiny_vit):
    root, reference, (labels, train, val) = folder_run
    saved = root.parent / "saved"
    datasets.DatasetDict({"train": hf_split(train, labels), "validation": hf_split(val, labels)}
                         ).save_to_disk(str(saved))
    out = root.parent / "hf-run"
    assert train_on(saved, out, tiny_vit) == 0
    assert labels_of(out) == labels_of(reference)
    assert_same_validation(reference, out)
    # parquet, one split in the folder's order: the same stratified, seeded split
    parquet = root.parent / "all.parquet"
    in_order = sorted(train + val, key=lambda s: (s[1], s[0]))
    hf_split(in_order, labels).cast_column("image", datasets.Image(decode=True)).to_parquet(str(parquet))
    out = root.parent / "parquet-run"
    assert train_on(parquet, out, tiny_vit) == 0
    assert labels_of(out) == labels_of(reference)
    assert_same_validation(reference, out)
    assert json.loads((out / "best" / "training_info.json").read_text())["data"]["form"] == "hf"


def test_shards_from_to_shards_train_and_score_as_the_folder(folder_run, tiny_vit, capsys):
    import classifier
    import train
    root, reference, (_, _, val) = folder_run
    shards = root.parent / "shards"
    assert classifier.main(["--to-shards", str(root), str(shards), "--val-split", "0.25",
                            "--split-seed", "1", "--shard-size", "10"]) == 0
    pattern = f"{shards}/train-{{000000..000002}}.tar"
    assert f"--data '{pattern}'" in capsys.readouterr().out
    out = root.parent / "shard-run"
    assert train_on(pattern, out, tiny_vit) == 0
    assert labels_of(out) == labels_of(reference)
    # the folder's model scored on the validation shards: the folder run's own validation figures
    assert train.main(["--evaluate", "--model", str(reference / "best"), "--data", pattern,
                       "--batch-size", "8", "--num-workers", "0", "--precision", "fp32"]) == 0
    said = capsys.readouterr().out
    best = read_rows(reference / "metrics.csv")[-1]
    assert f"{len(val)} images | loss {float(best['val_loss']):.4f} acc {float(best['val_acc']):.3f}" in said


def write_shards(tmp_path, per_class=8):
    import classifier
    root = make_pattern_folder(tmp_path / "images", per_class=per_class, size=32)
    assert classifier.main(["--to-shards", str(root), str(tmp_path / "shards"), "--shard-size", "6"]) == 0
    return tmp_path / "shards"


def test_every_form_answers_the_source_protocol_alike(tmp_path):
    """The four forms of one folder and its split: the same labels and class counts, a fingerprint
    that names the data, --exclude on what is listed, and the model's label map for --evaluate."""
    from vitclassifier.data.sources import open_source
    from vitclassifier.data.transforms import Preprocessing, eval_transform
    shards = write_shards(tmp_path)
    root = tmp_path / "images"
    labels, train, val = load_splits(root, 0.2, 42)
    rows = [f"{p.relative_to(tmp_path)},{labels[i]},{part}"
            for part, samples in (("train", train), ("val", val)) for p, i in samples]
    (tmp_path / "labels.csv").write_text("file,label,split\n" + "\n".join(rows) + "\n")
    datasets.DatasetDict({"train": hf_split(train, labels), "validation": hf_split(val, labels)}
                         ).save_to_disk(str(tmp_path / "saved"))
    counts = sorted(label for _, label in train)
    for data, form in ((root, "folder"), (tmp_path / "labels.csv", "labels"), (tmp_path / "saved", "hf"),
                       (shards, "shards")):
        source = open_source(data)
        assert (source.form, source.streamed, source.labels) == (form, form == "shards", labels)
        assert sorted(source.train_labels()) == counts and len(source.val()) == len(val)
        assert source.describe_split() == {"form": form, "data": str(data)}
        assert source.fingerprint() == open_source(data).fingerprint()
        model_labels = labels[::-1]  # --evaluate: the model's label map, in its own order
        _, dataset = source.evaluation_source(model_labels, Path("model"), eval_transform(Preprocessing(32)),
                                              32, 4)
        scored = train + val if form == "folder" else val  # the others have their own validation part
        assert sorted(item[1] for item in dataset) == sorted(model_labels.index(labels[i]) for _, i in scored)
        with pytest.raises(UserError, match="not in the checkpoint"):
            source.evaluation_source(labels[1:], Path("model"), eval_transform(Preprocessing(32)), 32, 4)
    listed = tmp_path / "exclude.txt"
    listed.write_text(f"{train[0][0].relative_to(root)}\n")
    with pytest.raises(UserError, match="not on streamed tar shards"):
        open_source(shards).excluding(listed)
    kept = open_source(root).excluding(listed, quiet=True)
    assert len(kept.train()) == len(train) - 1 and train[0] not in kept.train()
    assert kept.describe_split()["exclude"]["left_out"] == {"train": 1, "val": 0}
    assert kept.fingerprint() != open_source(root).fingerprint()


def names_of(stream, workers=0) -> list[str]:
    from torch.utils.data import DataLoader
    loader = DataLoader(stream, batch_size=stream.batch_size, num_workers=workers,
                        collate_fn=lambda batch: [item[2] for item in batch])
    return [name for batch in loader for name in batch]


def test_a_shard_stream_resumes_at_a_step_and_ignores_the_worker_count(tmp_path):
    from vitclassifier.data.sources import open_source
    from vitclassifier.data.transforms import Preprocessing, eval_transform
    shards = write_shards(tmp_path)
    source = open_source(shards)
    train = source.train()
    stream = source.training_stream(eval_transform(Preprocessing(32)), 32, 2, 4, lambda e: 7 * e)
    stream.set_epoch(3)
    whole = names_of(stream)
    assert len(whole) == len(train) == len(set(whole))  # every image once, the last step smaller
    assert stream.steps == -(-len(train) // 4) and stream.uneven_note() is None
    assert names_of(stream, workers=2) == whole  # workers decode their batches; the order stays
    stream.set_epoch(3, start_batch=2)
    assert names_of(stream) == whole[8:]
    stream.set_epoch(4)
    assert names_of(stream) != whole  # another epoch, another order


def test_uneven_shards_over_two_processes_take_the_smallest_share_and_say_what_is_left_out(tmp_path):
    from vitclassifier.data.sources import open_source
    from vitclassifier.data.transforms import Preprocessing, eval_transform
    shards = write_shards(tmp_path)  # shards of 6 images and a smaller last one
    source = open_source(shards)
    train = source.train()
    shares = [sum(train.counts[0::2]), sum(train.counts[1::2])]
    assert shares[0] != shares[1]
    streams = [source.training_stream(eval_transform(Preprocessing(32)), 32, 2, 4, lambda e: e, rank, 2)
               for rank in (0, 1)]
    taken = [names_of(stream) for stream in streams]
    assert [len(names) for names in taken] == [min(shares)] * 2 and not set(taken[0]) & set(taken[1])
    assert streams[0].steps == streams[1].steps == -(-min(shares) // 4)
    left_out = sum(shares) - 2 * min(shares)
    note = streams[0].uneven_note()
    assert f"{left_out} of the {len(train)} training images are left out of each epoch" in note


def check_report(data, capsys, *extra) -> tuple[int, dict, str]:
    """classifier.py --check-data's exit code, JSON report and text (stderr with --json -)."""
    import classifier
    capsys.readouterr()
    code = classifier.main(["--check-data", str(data), "--json", "-", "--image-size", "40", *map(str, extra)])
    out, err = capsys.readouterr()
    return code, json.loads(out), err


def test_check_data_decodes_shards_and_label_files_as_the_folder(tmp_path, capsys):
    import classifier
    root = make_pattern_folder(tmp_path / "images", per_class=6, size=32)
    (root / "plain" / "plain_broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot an image")
    assert classifier.main(["--to-shards", str(root), str(tmp_path / "shards"), "--shard-size", "5"]) == 0
    (tmp_path / "labels.csv").write_text("file,label\n" + "".join(
        f"{p.relative_to(tmp_path)},{p.parent.name}\n" for p in sorted(root.rglob("*.png"))))
    code, folder, _ = check_report(root, capsys)
    assert code == 0 and folder["classes"]["plain"]["unreadable"] == 1
    for data in (tmp_path / "shards", tmp_path / "labels.csv"):
        code, report, _ = check_report(data, capsys)
        assert code == 0 and report["classes"] == folder["classes"]  # train/val/total/unreadable/small
        assert [(b["class"], b["split"]) for b in report["unreadable"]] == [
            (b["class"], b["split"]) for b in folder["unreadable"]]
        assert report["recommendations"] == folder["recommendations"]
    assert check_report(tmp_path / "shards", capsys)[1]["duplicates"]["checked"] is False
    last = tmp_path / "shards" / "train-000003.tar"
    last.write_bytes(last.read_bytes()[:last.stat().st_size // 3])
    code, report, err = check_report(tmp_path / "shards", capsys)
    assert code == 0 and "train-000003.tar is damaged or truncated" in err
    assert report["damaged_shards"][0]["read"] < report["damaged_shards"][0]["expected"]
    assert "1 shard(s) end early" in report["recommendations"][0]
    for broken in sorted((root / "vertical").glob("*.png")):  # a class with no readable image: exit 1
        broken.write_bytes(b"GIF89a broken")
    assert classifier.main(["--to-shards", str(root), str(tmp_path / "broken"), "--shard-size", "5"]) == 0
    code, report, _ = check_report(tmp_path / "broken", capsys)
    assert code == 1 == check_report(root, capsys)[0]
    assert "class 'vertical': all 6 files are unreadable" in report["fatal"]


def test_a_truncated_shard_is_skipped_with_a_warning_and_the_steps_stay(tmp_path, capsys):
    from vitclassifier.data.sources import open_source
    from vitclassifier.data.transforms import Preprocessing, eval_transform
    shards = write_shards(tmp_path)
    source = open_source(shards)
    train = source.train()
    first = shards / "train-000000.tar"
    first.write_bytes(first.read_bytes()[:first.stat().st_size // 2])
    stream = source.training_stream(eval_transform(Preprocessing(32)), 32, 2, 2, lambda e: e)
    items = list(stream)
    assert len(items) == len(train)  # as many steps as planned: what the shard lacks is unreadable
    assert any(item[0] is None for item in items) and any(item[0] is not None for item in items)
    assert "train-000000.tar is damaged or truncated" in capsys.readouterr().err


@pytest.mark.slow  # four short training runs
def test_stopped_twice_and_resumed_over_shards_the_run_is_the_uninterrupted_one(tmp_path, tiny_vit,
                                                                                 monkeypatch, capsys):
    """Stopped after epoch 1, then at a step boundary inside epoch 2 (the stream resumes after the samples
    of the steps taken): --resume twice gives the 2-epoch run's metrics and best weights."""
    import signal

    import classifier
    import train
    from vitclassifier.training import trainer
    root = make_pattern_folder(tmp_path / "images", per_class=12, size=32)
    assert classifier.main(["--to-shards", str(root), str(tmp_path / "shards"), "--val-split", "0.25",
                            "--split-seed", "1", "--shard-size", "10"]) == 0
    pattern = f"{tmp_path / 'shards'}/train-{{000000..000002}}.tar"  # 27 images: steps of 8, 8, 8, 3
    straight, out = tmp_path / "straight", tmp_path / "stopped"
    assert train.main(run_args(straight, pattern, tiny_vit)) == 0
    write_metrics, forward_backward = trainer.write_metrics, trainer.Trainer.forward_backward

    def write_then_interrupt(path, rows):
        write_metrics(path, rows)
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "write_metrics", write_then_interrupt)
    assert train.main(run_args(out, pattern, tiny_vit)) == 130
    monkeypatch.setattr(trainer, "write_metrics", write_metrics)
    steps = []

    def signal_in_second_step(self, *batch):  # Ctrl-C inside the second step of the resumed epoch
        steps.append(len(steps))
        if len(steps) == 2:  # one micro-batch a step: the run stops when that step is taken
            os.kill(os.getpid(), signal.SIGINT)
        return forward_backward(self, *batch)

    monkeypatch.setattr(trainer.Trainer, "forward_backward", signal_in_second_step)
    capsys.readouterr()
    assert train.main(["--resume", str(out)]) == 130
    assert "Stopped in epoch 2 after step 2 of 4" in capsys.readouterr().err
    monkeypatch.setattr(trainer.Trainer, "forward_backward", forward_backward)
    assert train.main(["--resume", str(out)]) == 0
    assert "Resuming" in capsys.readouterr().out
    assert_same_metrics(out, straight)
    weights = "best/model.safetensors"
    assert (out / weights).read_bytes() == (straight / weights).read_bytes()


@pytest.mark.parametrize("case, message", [
    ("unknown column", "--label-column 'breed' is not a column of"),
    ("one class", "has 1 class(es)"),
    ("no image column", "has no image column"),
    ("hub offline", "no connection to the Hugging Face Hub"),  # conftest.py sets HF_HUB_OFFLINE
])
def test_bad_sources_get_one_clear_line(tmp_path, tiny_vit, capsys, case, message):
    root = make_pattern_folder(tmp_path / "images", per_class=3, size=32)
    files = sorted(root.rglob("*.png"))
    extra = []
    if case == "hub offline":
        data = "hf:no-such-owner/no-such-dataset"
    elif case == "no image column":
        data = tmp_path / "noimage"
        datasets.Dataset.from_dict({"text": ["a", "b"], "label": [0, 1]}).save_to_disk(str(data))
    else:
        data = tmp_path / "labels.csv"
        label = (lambda p: "x") if case == "one class" else (lambda p: p.parent.name)
        data.write_text("file,label\n" + "".join(f"{p.relative_to(tmp_path)},{label(p)}\n" for p in files))
        extra = ["--label-column", "breed"] if case == "unknown column" else []
    assert train_on(data, tmp_path / "out", tiny_vit, *extra) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and message in err[-1] and "Traceback" not in "\n".join(err)
    assert not (tmp_path / "out").exists() or not (tmp_path / "out" / "best").exists()
    shutil.rmtree(tmp_path / "out", ignore_errors=True)


@pytest.mark.slow  # torchrun: two training processes
@pytest.mark.skipif(sys.platform == "win32", reason="torchrun's gloo on Windows is not supported")
def test_torchrun_splits_shards_across_two_processes(tmp_path, tiny_vit):
    shards = write_shards(tmp_path, per_class=10)
    pattern = f"{shards}/train-{{000000..000003}}.tar"
    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               str(ROOT / "train.py"), *run_args(out, pattern, tiny_vit), *ONE_EPOCH, "--batch-size", "4"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 processes, global batch 8" in result.stdout
    index = json.loads((shards / "index.json").read_text())
    info = json.loads((out / "best" / "training_info.json").read_text())
    assert info["val_images"] == sum(entry["count"] for entry in index["val"])  # each image once, summed
    assert info["labels"] == index["labels"] == CLASSES


def test_an_image_listed_with_two_labels_keeps_its_first_and_is_named(tmp_path, capsys):
    from vitclassifier.data.labelfile import read_label_file
    make_pattern_folder(tmp_path / "images", per_class=2, size=32)
    files = sorted((tmp_path / "images").rglob("*.png"))
    rows = [f"{file.relative_to(tmp_path)},{file.parent.name}" for file in files]
    rows.append(f"{files[0].relative_to(tmp_path)},{files[-1].parent.name}")  # again, another label
    (tmp_path / "labels.csv").write_text("filename,label\n" + "\n".join(rows) + "\n")
    classes, _ = read_label_file(tmp_path / "labels.csv")
    holding = [name for name, paths in classes.items() if files[0].resolve() in map(Path.resolve, paths)]
    assert holding == [files[0].parent.name]
    assert files[0].name in capsys.readouterr().err


def test_a_parquet_input_names_the_arrow_copy_it_leaves_in_the_cache(tmp_path, monkeypatch, capsys):
    from vitclassifier.data.hfdata import open_splits_of
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "rows.parquet"
    datasets.Dataset.from_dict({"image": [b"x", b"y"], "label": [0, 1]}).to_parquet(str(data))
    capsys.readouterr()
    assert len(open_splits_of(data)["train"]) == 2
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note: ")]
    assert len(notes) == 1 and str(data) in notes[0] and f"{tmp_path / 'cache'}{os.sep}parquet" in notes[0]
    assert list((tmp_path / "cache").rglob("*.arrow"))  # the copy it names is there
    open_splits_of(data)  # a second read (--evaluate opens it again) does not say it twice
    assert "note: " not in capsys.readouterr().err
