"""Hostile data files (issue 33): files a few bytes long that would make gigabytes, shards that hang
or end inside a header, label files that point out of their folder or break the parsers. Every case
is built here with Pillow, tarfile and gzip; every bound is tested at a small limit set through its
environment variable, so that no test allocates much."""
from __future__ import annotations

import io
import json
import os
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from vitclassifier.data.augment import train_decode
from vitclassifier.data.dataset import ImageFolderDataset
from vitclassifier.data.images import FileTooLarge
from vitclassifier.data.shardindex import open_shards
from vitclassifier.data.shards import read_shard
from vitclassifier.data.transforms import Preprocessing, eval_transform
from vitclassifier.errors import UserError
from vitclassifier.inference.explain import ExplainDataset

PREP = Preprocessing(image_size=32)  # resize_size 36


def strip_and_square(folder: Path) -> tuple[Path, Path]:
    """A 3000x1 PNG (3000 pixels: within any decoding budget) and an ordinary 40x40 one."""
    folder.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (3000, 1), (200, 10, 10)).save(folder / "strip.png")
    Image.new("RGB", (40, 40), (10, 200, 10)).save(folder / "square.png")
    return folder / "strip.png", folder / "square.png"


def test_a_long_strip_is_refused_before_resizing_and_the_other_images_go_on(tmp_path, monkeypatch):
    # resized to a short side of 36 the strip would be 108000x36, 3.9 megapixels; the budget: 1
    monkeypatch.setenv("VIT_MAX_PIXELS", "1000000")
    strip, square = strip_and_square(tmp_path)
    for transform in (eval_transform(PREP), train_decode(PREP)):
        dataset = ImageFolderDataset([(strip, 0), (square, 1)], transform, PREP.resize_size)
        pixels, _, _, reason = dataset[0]
        assert pixels is None
        assert reason.startswith("ImageTooLarge: 3000x1 resized to a short side of 36 would be "
                                 "108000x36"), reason
        assert "VIT_MAX_PIXELS" in reason
        assert dataset[1][0] is not None and dataset[1][3] is None
    explained = ExplainDataset([strip, square], PREP)
    assert explained[0][0] is None and "ImageTooLarge" in explained[0][2]
    assert explained[1][0] is not None
    monkeypatch.setenv("VIT_MAX_PIXELS", "5000000")  # a budget that holds the resized strip: read
    assert ImageFolderDataset([(strip, 0)], eval_transform(PREP), PREP.resize_size)[0][3] is None


def png_bytes(colour: tuple[int, int, int] = (10, 200, 10)) -> bytes:
    stream = io.BytesIO()
    Image.new("RGB", (40, 40), colour).save(stream, "PNG")
    return stream.getvalue()


def add_member(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    archive.addfile(info, io.BytesIO(data))


def write_tar(path: Path, samples: list[tuple[str, bytes | None, bytes | None]], mode: str = "w") -> Path:
    """A shard of (key, image bytes or None, .cls bytes or None) samples."""
    with tarfile.open(path, mode) as archive:
        for key, image, cls in samples:
            if image is not None:
                add_member(archive, f"{key}.png", image)
            if cls is not None:
                add_member(archive, f"{key}.cls", cls)
    return path


def indexed_shards(folder: Path, train: list, val: list, counts: tuple[int, int] | None = None) -> Path:
    """A shard folder as --to-shards writes it: train-000000.tar, val-000000.tar and index.json
    (``counts``: what the index claims, else the true counts)."""
    folder.mkdir()
    write_tar(folder / "train-000000.tar", train)
    write_tar(folder / "val-000000.tar", val)
    counts = counts or (len(train), len(val))
    index = {"labels": ["a", "b"], "train": [{"name": "train-000000.tar", "count": counts[0]}],
             "val": [{"name": "val-000000.tar", "count": counts[1]}]}
    (folder / "index.json").write_text(json.dumps(index))
    return folder


def two_classes(prefix: str, count: int) -> list:
    return [(f"{prefix}{i}", png_bytes((30 * i, 0, 0)), str(i % 2).encode()) for i in range(count)]


def test_a_member_over_the_byte_bound_is_refused_unread_naming_shard_and_member(tmp_path, monkeypatch,
                                                                                capsys):
    # a gzip shard: 600 KB of zeros inflate from about 1 KB; the bound, set low, is 100 KB
    monkeypatch.setenv("VIT_MAX_FILE_BYTES", "100000")
    shard = write_tar(tmp_path / "big.tar.gz", [("a0", png_bytes(), b"0"), ("a1", bytes(600_000), b"1"),
                                                ("a2", png_bytes(), b"0")], "w:gz")
    assert shard.stat().st_size < 10_000
    assert [key for key, _, _ in read_shard(str(shard))] == []  # a0 was still waiting for its group
    err = capsys.readouterr().err
    assert "warning: member a1.png of shard" in err and "skipping the rest of the shard" in err
    assert "600000 bytes, over the bound of 100000 bytes" in err
    assert "VIT_MAX_FILE_BYTES" in err and len(err.strip().splitlines()) == 1
    monkeypatch.setenv("VIT_MAX_FILE_BYTES", "1000000")
    assert [key for key, _, _ in read_shard(str(shard))] == ["a0", "a1", "a2"]


def test_a_shard_cut_inside_a_member_header_is_truncated_not_a_normal_end(tmp_path, capsys):
    shard = write_tar(tmp_path / "cut.tar", two_classes("k", 4))
    data = shard.read_bytes()
    second_header = data.index(b"k1.png")  # the second sample's first header
    shard.write_bytes(data[:second_header + 100])  # inside that 512-byte header block
    assert [key for key, _, _ in read_shard(str(shard))] == []  # k0 ends where the cut is noticed
    assert "cut.tar is damaged or truncated (it ends inside a member header" in capsys.readouterr().err


@pytest.mark.skipif(sys.platform != "linux", reason="named pipes")
def test_a_fifo_named_by_the_index_never_blocks_check_data(tmp_path, capsys):
    import classifier
    shards = indexed_shards(tmp_path / "shards", two_classes("t", 6), two_classes("v", 2))
    (shards / "val-000000.tar").unlink()
    os.mkfifo(shards / "val-000000.tar")  # a reader of a FIFO waits for a writer: for ever
    code = classifier.main(["--check-data", str(shards), "--json", str(tmp_path / "report.json"),
                            "--image-size", "32"])
    assert code in (0, 1)
    assert "val-000000.tar is damaged or truncated (a named pipe (FIFO), not a regular file" in (
        capsys.readouterr().err)


@pytest.mark.parametrize("claimed", [(4, 2), (9, 2)])
def test_an_index_that_miscounts_its_shards_is_refused_in_one_line(tmp_path, claimed):
    shards = indexed_shards(tmp_path / "shards", two_classes("t", 6), two_classes("v", 2), claimed)
    claim = f"says train-000000.tar holds {claimed[0]} sample.s., but it holds 6"
    with pytest.raises(UserError, match=claim):
        open_shards(shards, 0.2, 0)


def test_samples_without_a_label_or_with_one_the_index_lacks_are_named_and_counted(tmp_path, capsys):
    train = [*two_classes("t", 4), ("nolabel", png_bytes(), None), ("noimage", None, b"1"),
             ("huge", png_bytes(), b"9" * 5000), ("unknown", png_bytes(), b"7")]
    shards = indexed_shards(tmp_path / "shards", train, two_classes("v", 2), (4, 2))
    open_shards(shards, 0.2, 0)
    err = capsys.readouterr().err
    assert "warning: 4 sample(s) of" in err
    for fragment in ("nolabel: no label", "noimage: no image member", "huge: no label", "unknown: label '7'"):
        assert fragment in err
    write_tar(tmp_path / "plain-0.tar", train)  # no index: counted, the same four named
    write_tar(tmp_path / "plain-1.tar", two_classes("v", 2))
    open_shards(tmp_path / "plain-{0..1}.tar", 0.2, 0)
    assert "warning: 3 sample(s) of 2 shard(s) are left out" in capsys.readouterr().err  # '7': a class


def test_check_data_reports_the_samples_left_out_of_shards_in_its_json(tmp_path, capsys):
    import classifier
    lost = [("nolabel", png_bytes(), None), ("noimage", None, b"1"), ("unknown", png_bytes(), b"7"),
            *((f"more{i}", png_bytes(), None) for i in range(4))]
    shards = indexed_shards(tmp_path / "shards", [*two_classes("t", 4), *lost], two_classes("v", 2), (4, 2))
    assert classifier.main(["--check-data", str(shards), "--json", str(tmp_path / "report.json"),
                            "--image-size", "32"]) == 0
    assert "warning: 7 sample(s) of" in capsys.readouterr().err
    left_out = json.loads((tmp_path / "report.json").read_text())["left_out_samples"]
    assert left_out["count"] == 7 and left_out["first"] == [
        "train-000000.tar/nolabel: no label (.cls or .json)", "train-000000.tar/noimage: no image member",
        "train-000000.tar/unknown: label '7' not in index.json",
        "train-000000.tar/more0: no label (.cls or .json)",
        "train-000000.tar/more1: no label (.cls or .json)"]


def test_a_shard_pattern_naming_billions_of_shards_is_refused_in_one_line(tmp_path):
    with pytest.raises(UserError, match="names 10000000000 shards, more than the 100000"):
        open_shards(tmp_path / "s-{0000000000..9999999999}.tar", 0.2, 0)
    with pytest.raises(UserError, match=r"index.json is not a shard index .*not a file name"):
        indexed_shards(tmp_path / "evil", two_classes("t", 2), two_classes("v", 2))
        index = json.loads((tmp_path / "evil" / "index.json").read_text())
        index["train"][0]["name"] = "../../etc/passwd"
        (tmp_path / "evil" / "index.json").write_text(json.dumps(index))
        open_shards(tmp_path / "evil", 0.2, 0)


def test_to_shards_refuses_a_link_out_of_the_folder_and_a_file_over_the_bound(tmp_path, monkeypatch,
                                                                              capsys):
    import classifier
    root = tmp_path / "data"
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (40, 40), (40 * i, 0, 0)).save(root / name / f"{i}.png")
    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0")
    (root / "a" / "leak.jpg").symlink_to(secret)
    assert classifier.main(["--to-shards", str(root), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "leak.jpg is a link to " in err and "secret.txt, outside" in err and len(err.splitlines()) == 1
    (root / "a" / "leak.jpg").unlink()
    (root / "a" / "huge.jpg").write_bytes(bytes(50_000))  # not an image, and over the bound below
    monkeypatch.setenv("VIT_MAX_FILE_BYTES", "20000")
    assert classifier.main(["--to-shards", str(root), str(tmp_path / "out2")]) == 2
    assert "huge.jpg is 50000 bytes, over the bound of 20000 bytes" in capsys.readouterr().err
    assert not list((tmp_path / "out2").glob("*.tar"))  # refused before any shard was written


def test_a_cache_whose_directory_promises_gigabytes_is_ignored_before_loading(tmp_path, capsys):
    from vitclassifier.deep_audit.cache import load_cache
    cache = tmp_path / "embeddings-x.npz"
    with zipfile.ZipFile(cache, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("hashes.npy", bytes(2_000_000))  # 2 MB of zeros in a few KB
    assert cache.stat().st_size < 100_000
    assert load_cache(cache, "x").rows == {}
    assert "hashes.npy would inflate to 2000000 bytes from a file of" in capsys.readouterr().err


def test_a_dataset_cell_naming_a_huge_file_is_refused_unread(tmp_path, monkeypatch):
    from vitclassifier.data.hfdata import Table
    huge = tmp_path / "huge.png"
    huge.write_bytes(bytes(50_000))
    monkeypatch.setenv("VIT_MAX_FILE_BYTES", "20000")
    table = Table("train", [{"image": {"bytes": None, "path": str(huge)}}, {"image": bytes(30_000)}])
    for row, fragment in ((0, "huge.png is 50000 bytes"), (1, "the image cell of row 1 is 30000 bytes")):
        with pytest.raises(FileTooLarge, match=fragment):
            table.image_bytes(row)


def label_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(4):
        Image.new("RGB", (40, 40), (50 * i, 0, 0)).save(folder / f"{i}.png")
    return folder


def test_label_file_rows_outside_its_folder_or_without_a_label_are_named_and_skipped(tmp_path, capsys):
    from vitclassifier.data.labelfile import read_label_file
    label_folder(tmp_path)
    secret = tmp_path.parent / f"{tmp_path.name}-secret.png"
    Image.new("RGB", (40, 40)).save(secret)
    (tmp_path / "images" / "link.png").symlink_to(secret)
    rows = ["file,label", "images/0.png,a", "images/1.png,b", "images/2.png,", "images/3.png,-1",
            f"{secret},a", f"../{secret.name},b", "images/link.png,a"]
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    classes, _ = read_label_file(tmp_path / "labels.csv")
    assert sum(map(len, classes.values())) == 2
    err = capsys.readouterr().err
    assert "2 image(s) named in" in err and "have no label (empty or -1) and are skipped" in err
    assert "3 image(s) named in" in err and "lie outside its folder" in err and "link.png" in err


@pytest.mark.parametrize("text, fragment", [
    ("file,label\n" + "images/0.png," + "x" * 150_000 + "\n", "field larger than field limit"),
    ('file,label\nimages/0.png,a\n"images/1.png,b\nimages/2.png,a\nimages/3.png,b\n', "stray quote"),
])
def test_a_label_file_that_breaks_the_csv_parser_is_one_line(tmp_path, text, fragment):
    from vitclassifier.data.labelfile import read_label_file
    label_folder(tmp_path)
    (tmp_path / "labels.csv").write_text(text)
    with pytest.raises(UserError, match=fragment):
        read_label_file(tmp_path / "labels.csv")


@pytest.mark.parametrize("line", ['{"file": "images/0.png", "label": ' + "[" * 100_000 + "]" * 100_000 + "}",
                                  '{"file": "images/0.png", "label": ' + "9" * 5000 + "}"])
def test_a_jsonl_line_nested_too_deep_or_with_a_huge_number_is_one_line(tmp_path, line):
    from vitclassifier.data.labelfile import read_label_file
    label_folder(tmp_path)
    (tmp_path / "labels.jsonl").write_text(line + "\n")
    with pytest.raises(UserError, match="line 1: not JSON"):
        read_label_file(tmp_path / "labels.jsonl")


def test_a_refused_fold_column_is_named(tmp_path):
    from vitclassifier.data.labelfile import load_label_file
    label_folder(tmp_path)
    rows = ["file,label,fold", *(f"images/{i}.png,{'ab'[i % 2]},{i}" for i in range(4))]
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(UserError, match="the split column 'fold' of .* has values other than train and val"):
        load_label_file(tmp_path / "labels.csv", 0.2, 0)


def test_a_dataset_with_a_split_or_file_of_zero_rows_is_one_line_naming_it(tmp_path):
    """datasets itself fails with an IndexError (save_to_disk) or 'Instruction ... corresponds to no
    data' (parquet): the line names the empty split or file."""
    datasets = pytest.importorskip("datasets")
    from vitclassifier.data.hfdata import load_hf
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])})
    square = io.BytesIO()
    Image.new("RGB", (8, 8)).save(square, "PNG")
    rows = datasets.Dataset.from_dict({"image": [{"bytes": square.getvalue(), "path": None}] * 4,
                                       "label": [0, 1, 0, 1]}, features=features)
    empty = datasets.Dataset.from_dict({"image": [], "label": []}, features=features)
    datasets.DatasetDict({"train": rows, "validation": empty}).save_to_disk(str(tmp_path / "saved"))
    empty.save_to_disk(str(tmp_path / "one"))
    (tmp_path / "parts").mkdir()
    rows.to_parquet(str(tmp_path / "parts" / "train.parquet"))
    empty.to_parquet(str(tmp_path / "parts" / "validation.parquet"))
    empty.to_parquet(str(tmp_path / "empty.parquet"))
    for data, fragment in (("saved", "saved: its validation split has 0 rows"), ("one", "one: it has 0 rows"),
                           ("parts", "its parquet file .*validation.parquet has 0 rows"),
                           ("empty.parquet", "its parquet file .*empty.parquet has 0 rows")):
        with pytest.raises(UserError, match=fragment):
            load_hf(tmp_path / data, 0.25, 1)
