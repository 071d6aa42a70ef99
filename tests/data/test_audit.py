"""The data set audit (data/audit.py) and its command line, ``classifier.py --check-data``."""
from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
from helpers import must_not_load, one_error_line
from PIL import Image

import classifier
from vitclassifier.data import audit
from vitclassifier.data.audit import audit_dataset, format_report
from vitclassifier.data.folders import load_splits
from vitclassifier.data.synthetic import generate_data


def make_images(folder: Path, count: int, size: int = 16, prefix: str = "img") -> list[Path]:
    """``count`` PNGs of random noise, seeded by their path: every file differs from every other."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"{prefix}_{i:03d}.png"
        noise = random.Random(str(path)).randbytes(size * size * 3)
        Image.frombytes("RGB", (size, size), noise).save(path)
        paths.append(path)
    return paths


def run_audit(root: Path, **options) -> dict:
    """Audit ``root`` split exactly as the command line does."""
    return audit_dataset(*load_splits(root, 0.2, 42), **options)


def test_counts_per_class(tmp_path):
    for name, count in (("ant", 5), ("bee", 4), ("cat", 10)):
        make_images(tmp_path / name, count)
    report = run_audit(tmp_path, image_size=8)
    assert report["classes"] == {
        "ant": {"train": 4, "val": 1, "total": 5, "unreadable": 0, "small": 0},
        "bee": {"train": 3, "val": 1, "total": 4, "unreadable": 0, "small": 0},
        "cat": {"train": 8, "val": 2, "total": 10, "unreadable": 0, "small": 0}}
    assert report["totals"] == {"train": 15, "val": 4, "total": 19}
    assert report["duplicates"]["groups"] == [] and report["fatal"] == [] and report["unreadable"] == []
    table = format_report(report).splitlines()
    assert any(line.split() == ["cat", "8", "2", "10", "0", "0"] for line in table)
    assert any(line.split() == ["total", "15", "4", "19", "0", "0"] for line in table)


def test_a_file_copied_into_train_and_val_is_a_cross_split_duplicate(tmp_path):
    for split in ("train", "val"):
        for name in ("ant", "bee"):
            make_images(tmp_path / split / name, 3, prefix=split)
    leaked = tmp_path / "val" / "ant" / "leaked.png"
    shutil.copyfile(tmp_path / "train" / "ant" / "train_001.png", leaked)
    report = run_audit(tmp_path)
    duplicates = report["duplicates"]
    assert duplicates["cross_split_groups"] == 1 and duplicates["cross_class_groups"] == 0
    [group] = duplicates["groups"]
    assert {(f["path"], f["split"]) for f in group["files"]} == {
        (str(tmp_path / "train" / "ant" / "train_001.png"), "train"), (str(leaked), "val")}
    assert any("train and val" in line for line in format_report(report, brief=True).splitlines())
    assert str(leaked) in format_report(report)


def test_identical_files_in_two_classes_are_reported(tmp_path):
    make_images(tmp_path / "ant", 4)
    make_images(tmp_path / "bee", 4)
    shutil.copyfile(tmp_path / "ant" / "img_000.png", tmp_path / "bee" / "same.png")
    shutil.copyfile(tmp_path / "ant" / "img_001.png", tmp_path / "ant" / "again.png")  # same class: harmless
    duplicates = run_audit(tmp_path)["duplicates"]
    assert len(duplicates["groups"]) == 2 and duplicates["redundant_files"] == 2
    [across] = [g for g in duplicates["groups"] if g["cross_class"]]
    assert sorted(f["class"] for f in across["files"]) == ["ant", "bee"]


def test_unreadable_files_are_named_with_a_reason(tmp_path):
    make_images(tmp_path / "ant", 4)
    make_images(tmp_path / "bee", 4)
    good = (tmp_path / "ant" / "img_000.png").read_bytes()
    (tmp_path / "ant" / "truncated.png").write_bytes(good[: len(good) // 2])
    (tmp_path / "bee" / "empty.png").write_bytes(b"")
    (tmp_path / "bee" / "notes.jpg").write_text("not a picture at all")
    report = run_audit(tmp_path)
    reasons = {Path(bad["path"]).name: bad["reason"] for bad in report["unreadable"]}
    assert sorted(reasons) == ["empty.png", "notes.jpg", "truncated.png"]
    assert all(": " in reason and reason.split(":")[0].endswith("Error") for reason in reasons.values())
    assert report["classes"]["bee"]["unreadable"] == 2 and report["classes"]["ant"]["unreadable"] == 1
    assert report["fatal"] == []  # both classes still have readable images
    text = format_report(report)
    assert f"{tmp_path / 'bee' / 'notes.jpg'}: {reasons['notes.jpg']}" in text


def test_images_smaller_than_the_model_input_are_counted(tmp_path):
    make_images(tmp_path / "ant", 3, size=8, prefix="tiny")
    make_images(tmp_path / "ant", 2, size=16)
    make_images(tmp_path / "bee", 4, size=16)
    report = run_audit(tmp_path, image_size=12)
    assert report["classes"]["ant"]["small"] == 3 and report["classes"]["bee"]["small"] == 0
    examples = report["small_examples"]["ant"]
    assert len(examples) == 3 and all(e["width"] == e["height"] == 8 for e in examples)
    assert any("smaller than the 12 px" in advice for advice in report["recommendations"])
    assert run_audit(tmp_path, image_size=None)["classes"]["ant"]["small"] == 0


def test_imbalance_ratio_and_recommendation(tmp_path):
    make_images(tmp_path / "many", 10)
    make_images(tmp_path / "few", 2)
    report = run_audit(tmp_path, decode=False)
    assert report["imbalance_ratio"] == 5.0
    assert (report["largest_class"], report["smallest_class"]) == ("many", "few")
    [advice] = report["recommendations"]
    assert "--class-weights auto" in advice and "--balanced-sampler" in advice
    brief = format_report(report, brief=True).splitlines()
    assert len(brief) <= 5 and "5.0" in brief[0] and "--class-weights auto" in brief[0]

    make_images(tmp_path / "few", 2, prefix="more")  # 10 vs 4: no longer worth weighting
    assert run_audit(tmp_path, decode=False)["recommendations"] == []


@pytest.mark.slow
def test_a_class_of_corrupt_files_is_fatal_and_exits_1(tmp_path, capsys):
    make_images(tmp_path / "ant", 4)
    make_images(tmp_path / "bee", 4)
    assert classifier.main(["--check-data", str(tmp_path)]) == 0
    assert "Training is possible" in capsys.readouterr().out

    for path in (tmp_path / "bee").iterdir():
        path.write_bytes(b"\xff\xd8 this is no JPEG")
    report = run_audit(tmp_path)
    assert any("'bee'" in reason and "unreadable" in reason for reason in report["fatal"])
    assert any("training needs at least 2" in reason for reason in report["fatal"])
    assert classifier.main(["--check-data", str(tmp_path)]) == 1
    assert "Training is impossible" in capsys.readouterr().out


@pytest.mark.slow
def test_user_errors_exit_2_with_one_line(tmp_path, capsys):
    assert classifier.main(["--check-data", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "does not exist" in err[0]
    make_images(tmp_path / "ant", 2)
    make_images(tmp_path / "bee", 2)
    assert classifier.main(["--check-data", str(tmp_path), "--val-split", "1.5"]) == 2
    assert capsys.readouterr().err.startswith("error: --val-split")


@pytest.mark.slow
def test_json_to_stdout_parses_and_has_the_counts(tmp_path, capsys):
    make_images(tmp_path / "ant", 5)
    make_images(tmp_path / "bee", 3)
    assert classifier.main(["--check-data", str(tmp_path), "--json", "-", "--image-size", "16"]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["classes"]["ant"] == {"train": 4, "val": 1, "total": 5, "unreadable": 0, "small": 0}
    assert report["totals"]["total"] == 8 and report["data"] == str(tmp_path)
    assert "Data: 2 classes" in captured.err  # the text report moves out of the way

    assert classifier.main(["--check-data", str(tmp_path), "--json", str(tmp_path / "r.json")]) == 0
    assert json.loads((tmp_path / "r.json").read_text())["classes"]["bee"]["total"] == 3
    assert "Data: 2 classes" in capsys.readouterr().out


@pytest.mark.slow
def test_the_command_line_split_is_train_py_default_split(tmp_path, capsys):
    """Whether two copies straddle train and val depends on the split: it must be train.py's."""
    import train
    make_images(tmp_path / "ant", 12)
    make_images(tmp_path / "bee", 12)
    shutil.copyfile(tmp_path / "ant" / "img_003.png", tmp_path / "ant" / "copy.png")
    defaults = train.build_parser()
    _, train_samples, _ = load_splits(tmp_path, defaults.get_default("val_split"),
                                      defaults.get_default("seed"))
    in_train = {str(path) for path, _ in train_samples}
    classifier.main(["--check-data", str(tmp_path), "--json", "-"])
    [group] = json.loads(capsys.readouterr().out)["duplicates"]["groups"]
    assert all((f["split"] == "train") == (f["path"] in in_train) for f in group["files"])


def test_without_decoding_no_image_is_opened(tmp_path, monkeypatch):
    make_images(tmp_path / "ant", 4)
    make_images(tmp_path / "bee", 4)
    (tmp_path / "bee" / "broken.png").write_bytes(b"garbage")
    shutil.copyfile(tmp_path / "ant" / "img_000.png", tmp_path / "bee" / "same.png")

    def no_opening(*args, **kwargs):
        raise AssertionError("decode=False opened an image")
    monkeypatch.setattr(Image, "open", no_opening)
    report = run_audit(tmp_path, decode=False)
    assert report["unreadable"] == [] and "unreadable" not in report["classes"]["bee"]
    assert report["duplicates"]["cross_class_groups"] == 1
    assert "not decoded" in format_report(report)


def test_only_files_sharing_a_size_are_hashed(tmp_path, monkeypatch):
    make_images(tmp_path / "ant", 2)
    make_images(tmp_path / "bee", 2)
    (tmp_path / "bee" / "odd.png").write_bytes((tmp_path / "bee" / "img_000.png").read_bytes() + b"1234")
    hashed = []
    group_by_digest = audit._group_by_digest
    monkeypatch.setattr(audit, "_group_by_digest",
                        lambda paths, limit: hashed.extend(paths) or group_by_digest(paths, limit))
    assert audit.find_duplicates(classifier.list_images(tmp_path)) == []
    assert hashed and tmp_path / "bee" / "odd.png" not in hashed


@pytest.mark.slow
def test_a_single_class_is_reported_as_impossible_with_exit_1(tmp_path, capsys):
    make_images(tmp_path / "ant", 4)
    assert classifier.main(["--check-data", str(tmp_path)]) == 1  # as the README says: training impossible
    out = capsys.readouterr().out
    assert "Training is impossible" in out and "training needs at least 2" in out
    assert classifier.main(["--check-data", str(tmp_path / "ant")]) == 2  # no class folder at all: usage


@pytest.mark.slow
def test_image_sizes_are_judged_only_against_a_known_size(tmp_path, capsys):
    make_images(tmp_path / "ant", 3, size=64)
    make_images(tmp_path / "bee", 3, size=64)
    classifier.main(["--check-data", str(tmp_path), "--json", "-"])
    report = json.loads(capsys.readouterr().out)
    assert report["image_size"] is None and all(c["small"] == 0 for c in report["classes"].values())
    classifier.main(["--check-data", str(tmp_path), "--json", "-", "--image-size", "96"])
    assert json.loads(capsys.readouterr().out)["classes"]["ant"]["small"] == 3


@pytest.mark.slow
def test_the_split_names_the_validation_folder_it_read(tmp_path, capsys):
    for split in ("train", "validation"):
        for name in ("ant", "bee"):
            make_images(tmp_path / split / name, 2, prefix=split)
    classifier.main(["--check-data", str(tmp_path)])
    assert "split: the train/ and validation/ folders" in capsys.readouterr().out


def test_the_brief_report_names_the_files_filed_under_two_classes(tmp_path):
    make_images(tmp_path / "ant", 6)
    make_images(tmp_path / "bee", 4)
    copies = [tmp_path / "bee" / f"same_{i}.png" for i in range(5)]
    for i, copy in enumerate(copies):
        shutil.copyfile(tmp_path / "ant" / f"img_{i:03d}.png", copy)
    [line] = [line for line in format_report(run_audit(tmp_path, decode=False), brief=True).splitlines()
              if "filed under two classes" in line]
    assert line.startswith("Warning: 5 image(s) are filed under two classes: ")
    assert sum(str(copy) in line for copy in copies) == audit.NAMED_GROUPS and "and 2 more" in line


def test_check_data_json_is_checked_before_the_audit(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("vitclassifier.data.sources.ListSource.full_audit", must_not_load)  # the audit
    generate_data(tmp_path / "data", ["circle", "star"], 2, 16, 0, tmp_path)
    capsys.readouterr()
    for target, message in ((tmp_path / "none" / "r.json", "does not exist"), (Path("/dev/full"), "regular")):
        assert classifier.main(["--check-data", str(tmp_path / "data"), "--json", str(target)]) == 2
        one_error_line(capsys.readouterr().err, "--json", message)

