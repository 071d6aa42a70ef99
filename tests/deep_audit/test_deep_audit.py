"""The deep audit (``classifier.py --check-data DIR --model M``, vitclassifier/deep_audit/) on data
with planted problems, audited with a tiny ViT trained in the test session (the trained_run fixture):
flipped labels, resized / re-encoded / cropped copies across train and val, an image of another kind.

The bounds are those measured here, set so that a finder that returns nothing, or everything, fails."""
from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from helpers import make_pattern_folder
from PIL import Image, ImageDraw

import classifier
from vitclassifier.data.folders import load_splits
from vitclassifier.data.options import CheckDataConfig
from vitclassifier.deep_audit.run import deep_audit

COPY_KINDS = ("resized", "reencoded", "cropped")


def split_into_folders(flat: Path, data: Path, rng: random.Random) -> None:
    """flat/<class>/* -> data/train/<class>/* and data/val/<class>/* (a fifth of each class)."""
    for folder in sorted(p for p in flat.iterdir() if p.is_dir()):
        files = sorted(folder.iterdir())
        rng.shuffle(files)
        for split, part in (("val", files[:len(files) // 5]), ("train", files[len(files) // 5:])):
            (data / split / folder.name).mkdir(parents=True, exist_ok=True)
            for path in part:
                path.rename(data / split / folder.name / path.name)


def plant_copies(data: Path, count: int, rng: random.Random) -> list[frozenset]:
    """``count`` copies of training images put into val/ (a leak), each resized, re-encoded or cropped."""
    pairs = []
    for i, path in enumerate(rng.sample(sorted((data / "train").rglob("*.png")), count)):
        kind, image = COPY_KINDS[i % 3], Image.open(path).convert("RGB")
        side = image.width
        if kind == "resized":
            image = image.resize((side * 3 // 4, side * 3 // 4), Image.BICUBIC)
        elif kind == "cropped":
            image = image.crop((2, 2, side - 2, side - 2)).resize((side, side), Image.BICUBIC)
        copy = data / "val" / path.parent.name / f"copy_{kind}_{path.stem}.jpg"
        image.save(copy, quality=35 if kind == "reencoded" else 90)
        pairs.append(frozenset((str(path.relative_to(data)), str(copy.relative_to(data)))))
    return pairs


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> tuple[Path, dict]:
    """The bar patterns the tiny ViT learnt, 40 per class: 6 training labels flipped (about 6%) and
    a stray of another kind among the bars: a black and white checkerboard."""
    rng, work = random.Random(0), tmp_path_factory.mktemp("planted")
    data = work / "data"
    split_into_folders(make_pattern_folder(work / "flat", per_class=40), data, rng)
    classes = sorted(p.name for p in (data / "train").iterdir())
    flipped = []
    for path in rng.sample(sorted((data / "train").rglob("*.png")), 6):
        wrong = rng.choice([name for name in classes if name != path.parent.name])
        target = data / "train" / wrong / f"flip_{path.name}"
        path.rename(target)
        flipped.append(str(target.relative_to(data)))
    stray = data / "train" / classes[0] / "stray.png"
    board = np.kron((np.indices((8, 8)).sum(axis=0) % 2) * 255, np.ones((5, 5))).astype(np.uint8)
    Image.fromarray(board).convert("RGB").save(stray)
    return data, {"flipped": set(flipped), "stray": str(stray.relative_to(data))}


def blobs(folder: Path, count: int, rng: random.Random) -> None:
    """``count`` distinct 40-px pictures: a background and three ellipses of random colours and places."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        image = Image.new("RGB", (40, 40), tuple(rng.randrange(256) for _ in range(3)))
        draw = ImageDraw.Draw(image)
        for _ in range(3):
            x, y = rng.randrange(30), rng.randrange(30)
            draw.ellipse((x, y, x + rng.randrange(6, 20), y + rng.randrange(6, 20)),
                         fill=tuple(rng.randrange(256) for _ in range(3)))
        image.save(folder / f"blob_{i:03d}.png")


def audit(data: Path, model: Path, out: Path) -> dict:
    options = CheckDataConfig(model=str(model), audit_out=out, device="cpu")
    return deep_audit(data, *load_splits(data, 0.2, 42), options)


def test_flipped_labels_and_the_stray_image_are_suspects(planted, trained_run, tmp_path):
    data, truth = planted
    found = audit(data, trained_run / "best", tmp_path / "audit")
    suspects = {row["path"] for row in found["label_issues"]}
    hits = suspects & truth["flipped"]
    assert len(hits) >= 4, found["label_issues"]  # measured: 4 of the 6, among 8 suspects
    assert len(hits) / len(suspects) >= 0.4, found["label_issues"]
    row = next(row for row in found["label_issues"] if row["path"] in hits)
    assert row["suggested_label"] != row["given_label"] and 0 <= row["label_quality"] < 0.5
    strays = [row["path"] for row in found["outliers"]]
    assert truth["stray"] in strays and len(strays) <= 3, strays  # measured: the stray alone
    with open(tmp_path / "audit" / "label_issues.csv") as handle:
        assert handle.readline().startswith("path,split,given_label,suggested_label,label_quality")
        assert {line.split(",")[0] for line in handle} == suspects  # paths relative to DIR


def test_copies_across_train_and_val_are_leaks(trained_run, tmp_path):
    rng, flat, data = random.Random(1), tmp_path / "flat", tmp_path / "data"
    for name in ("a", "b"):
        blobs(flat / name, 30, rng)
    split_into_folders(flat, data, rng)
    copies = plant_copies(data, 6, rng)
    found = audit(data, trained_run / "best", tmp_path / "audit")
    pairs = {frozenset((row["path"], row["duplicate_of"])): row for row in found["near_duplicates"]}
    assert len(set(pairs) & set(copies)) >= 4, pairs.keys()  # measured: 5 of the 6 (not one cropped copy)
    assert len(set(pairs) - set(copies)) <= 2  # false pairs among the 60 distinct pictures: measured 0
    assert all(pairs[pair]["leak"] and not pairs[pair]["contradictory"] for pair in set(pairs) & set(copies))
    assert all(pairs[pair]["split"] == "val" for pair in set(pairs) & set(copies))  # the copy to drop


def test_a_second_run_takes_every_embedding_from_the_cache(planted, trained_run, tmp_path, capsys):
    data, _ = planted
    first = audit(data, trained_run / "best", tmp_path / "audit")
    second = audit(data, trained_run / "best", tmp_path / "audit")
    assert first["from_cache"] == 0 and second["from_cache"] == second["images"] == first["images"]
    assert second["label_issues"] == first["label_issues"] and second["outliers"] == first["outliers"]
    [cache] = (tmp_path / "audit").glob("embeddings-*.npz")
    damaged = bytearray(cache.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    cache.write_bytes(bytes(damaged))
    capsys.readouterr()
    third = audit(data, trained_run / "best", tmp_path / "audit")
    assert "ignoring the embedding cache" in capsys.readouterr().err
    assert third["from_cache"] == 0 and third["label_issues"] == first["label_issues"]
    assert audit(data, trained_run / "best", tmp_path / "audit")["from_cache"] == first["images"]  # rebuilt


def test_the_command_writes_its_files_and_says_what_the_findings_are(planted, trained_run, tmp_path, capsys):
    data, _ = planted
    out = tmp_path / "audit"
    code = classifier.main(["--check-data", str(data), "--model", str(trained_run / "best"),
                            "--audit-out", str(out), "--device", "cpu"])
    text = capsys.readouterr().out
    assert code == 0
    assert "suspects to review, not verdicts" in text and "Suspected label errors:" in text
    assert "the train/ and val/ folders" in text
    names = {path.name for path in out.iterdir()}
    for kind in ("label_issues", "near_duplicates", "outliers"):
        assert {f"{kind}.csv", f"{kind}.png"} <= names
    report = json.loads((out / "report.json").read_text())
    assert report["deep"]["images"] == report["totals"]["total"]  # every image readable
    assert report["image_size"] == 32  # small images judged against the model's input size


@pytest.mark.parametrize("case", ["inside the data", "a file of someone else", "no --model"])
def test_unusable_output_folders_are_one_clear_error(planted, tmp_path, capsys, case, trained_run):
    data, _ = planted
    out = data / "audit" if case == "inside the data" else tmp_path / "audit"
    if case == "a file of someone else":
        out.mkdir()
        (out / "label_issues.csv").write_text("my own notes\n")
    model = [] if case == "no --model" else ["--model", str(trained_run / "best")]
    assert classifier.main(["--check-data", str(data), "--audit-out", str(out), *model]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "--audit-out" in err[0], err
    assert not (data / "audit").exists()
    if case == "a file of someone else":
        assert (out / "label_issues.csv").read_text() == "my own notes\n"


def test_a_preset_offline_fails_with_the_one_clear_message(planted, tmp_path, capsys):
    data, _ = planted
    assert classifier.main(["--check-data", str(data), "--model", "vit-tiny",
                            "--audit-out", str(tmp_path / "audit")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "can't be downloaded" in err[0] and "--no-pretrained" in err[0], err
