"""Tar shards in an object store (data/remote.py), against a real local S3-compatible server (moto's
server mode, real HTTP; the ``s3`` fixture): --check-data over s3:// as over the same shards on disk,
the bad-input lines, secrets never shown, a shard that goes away mid-epoch, and an outage retried."""
from __future__ import annotations

import io
import json
import tarfile
import threading
import urllib.request

import pytest
from helpers import S3_KEY, S3_SECRET, make_pattern_folder, upload

from vitclassifier.data.shards import MISSING, ShardStream, read_shard
from vitclassifier.data.sources import open_source
from vitclassifier.data.transforms import Preprocessing, eval_transform

PATTERN = "train-{000000..000003}.tar"


@pytest.fixture(scope="module")
def local_shards(tmp_path_factory):
    """24 pattern images as 4 training and 2 validation shards (--to-shards), with their index.json."""
    import classifier
    root = tmp_path_factory.mktemp("store")
    make_pattern_folder(root / "images", per_class=8, size=32)
    assert classifier.main(["--to-shards", str(root / "images"), str(root / "shards"), "--val-split", "0.25",
                            "--shard-size", "5"]) == 0
    return root / "shards"


@pytest.fixture
def bucket(s3, local_shards, request):
    """The shards uploaded to a bucket of the test's own: its URL."""
    url = f"s3://{request.node.name.replace('_', '-')[:50].strip('-')}/shards"
    upload(local_shards, url)
    return url


def check_data(capsys, data: str, *extra: str) -> tuple[int, str, str]:
    import classifier
    code = classifier.main(["--check-data", data, *extra])
    said = capsys.readouterr()
    return code, said.out, said.err


@pytest.mark.slow  # over 2 s
def test_check_data_over_s3_reports_what_it_reports_on_disk(bucket, local_shards, tmp_path, capsys):
    reports = []
    for data in (f"{bucket}/{PATTERN}", f"{local_shards}/{PATTERN}"):
        code, _, err = check_data(capsys, data, "--json", str(tmp_path / "report.json"))
        assert code == 0, err
        reports.append(json.loads((tmp_path / "report.json").read_text()))
    assert reports[0].pop("data") == f"{bucket}/{PATTERN}"
    reports[1].pop("data")
    assert reports[0] == reports[1] and reports[0]["totals"]["total"] == 24


def test_pipe_commands_read_the_shards_their_output_holds(local_shards, tmp_path, capsys):
    """``pipe:cat ...`` (webdataset's form, for any command that writes a shard to stdout): counted
    once (no index for commands) and audited as the files themselves are."""
    reports = []
    for data in (f"pipe:cat {local_shards}/{PATTERN}", f"{local_shards}/{PATTERN}"):
        code, _, err = check_data(capsys, data, "--json", str(tmp_path / "report.json"))
        assert code == 0, err
        reports.append(json.loads((tmp_path / "report.json").read_text()))
    assert reports[0]["totals"]["train"] + reports[0]["totals"]["val"] == 18  # the 4 training shards
    assert [c["total"] for c in reports[0]["classes"].values()] == [
        c["train"] for c in reports[1]["classes"].values()]


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert S3_SECRET not in err and S3_KEY not in err
    return lines[0]


def set_moto_auth(endpoint: str, count: str) -> None:
    """moto checks signatures after ``count`` requests (inf: never, as it starts)."""
    request = urllib.request.Request(f"{endpoint}/moto-api/reset-auth", data=count.encode(), method="POST",
                                     headers={"Content-Type": "text/plain"})
    urllib.request.urlopen(request, timeout=10).close()


def test_a_missing_bucket_no_credentials_and_a_403_are_one_line_naming_the_url(bucket, s3, monkeypatch,
                                                                              tmp_path, capsys):
    import s3fs

    import train
    code, _, err = check_data(capsys, f"s3://no-such-bucket/shards/{PATTERN}")
    assert code == 2 and "s3://no-such-bucket/shards/train-000000.tar: no such bucket" in one_error_line(err)
    assert train.main(["--data", f"s3://no-such-bucket/{PATTERN}", "--output-dir", str(tmp_path / "run"),
                       "--recipe", "fixed"]) == 2
    assert "no such bucket" in one_error_line(capsys.readouterr().err)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):  # and no ~/.aws of the machine's user
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    s3fs.S3FileSystem.clear_instance_cache()
    code, _, err = check_data(capsys, f"{bucket}/{PATTERN}")
    assert code == 2 and "no credentials found" in one_error_line(err) and bucket in err
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", S3_KEY)  # a key the server does not know: 403
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", S3_SECRET)
    s3fs.S3FileSystem.clear_instance_cache()
    set_moto_auth(s3, "0")
    try:
        code, _, err = check_data(capsys, f"{bucket}/{PATTERN}")
    finally:
        set_moto_auth(s3, "inf")
    assert code == 2 and "access denied" in one_error_line(err) and bucket in err


def web_url(endpoint: str, bucket: str) -> str:
    """The bucket's folder as a plain web URL (the server's path-style one), with a user and password:
    moto answers a request without any Authorization 403, as S3 does for a private bucket."""
    return endpoint.replace("http://", "http://alice:hunter22@") + bucket.removeprefix("s3:/")


def test_a_url_with_a_password_or_token_is_never_shown_with_them(bucket, s3, capsys, tmp_path):
    """The same shards over plain HTTP (the server's path-style URLs), with user:password@ and a
    query token in the URL: the report, its JSON and the errors show neither."""
    web = web_url(s3, bucket)
    code, out, err = check_data(capsys, f"{web}/{PATTERN}?token=tok-secret-1", "--json", str(tmp_path / "r"))
    assert code == 0, err
    out += (tmp_path / "r").read_text()
    assert json.loads((tmp_path / "r").read_text())["totals"]["total"] == 24
    code, out2, err2 = check_data(capsys, f"{web}/train-{{000000..000009}}.tar?token=tok-secret-1")
    assert code == 2 and "6 of its 10 shard(s) do not exist" in one_error_line(err2)
    for text in (out, err, out2, err2):
        assert "hunter22" not in text and "tok-secret-1" not in text
    assert "http://***@" in err2 and ".tar?***" in err2


def test_the_bounds_of_local_shards_hold_over_s3(bucket, local_shards, monkeypatch, tmp_path, capsys):
    """A gzip shard whose member inflates past VIT_MAX_FILE_BYTES, and a shard cut inside a member
    header: read from the store, each ends with the warning it gets on disk."""
    import fsspec
    fs = fsspec.filesystem("s3")
    packed = io.BytesIO()
    with tarfile.open(fileobj=packed, mode="w:gz") as archive:
        member = tarfile.TarInfo("a1.png")
        member.size = 600_000
        archive.addfile(member, io.BytesIO(bytes(600_000)))
    fs.pipe(f"{bucket}/big.tar.gz", packed.getvalue())
    cut = tmp_path / "cut.tar"
    cut.write_bytes((local_shards / "train-000000.tar").read_bytes()[:1024 + 100])  # in a member header
    fs.put(str(cut), f"{bucket}/cut.tar")
    monkeypatch.setenv("VIT_MAX_FILE_BYTES", "100000")
    assert list(read_shard(f"{bucket}/big.tar.gz")) == []
    err = capsys.readouterr().err
    assert "a1.png of shard s3://" in err and "over the bound of 100000 bytes" in err
    assert list(read_shard(f"{bucket}/cut.tar")) == list(read_shard(str(cut))) == []
    remote, local = capsys.readouterr().err.splitlines()
    reason = remote.split("cut.tar could not be read to its end (")[1].split("); skipping")[0]
    assert reason == local.split("cut.tar is damaged or truncated (")[1].split("); skipping")[0]
    assert "truncated" in reason and "samples count as unreadable" in remote


def stream_of(url: str) -> ShardStream:
    """The training shards of ``url`` as one unshuffled stream, as validation reads them."""
    source = open_source(url)
    return ShardStream(source.train(), eval_transform(Preprocessing(32)), 32, 4)


def test_a_shard_that_goes_away_mid_epoch_is_a_warning_and_its_samples_unreadable(bucket, capsys):
    import fsspec
    stream = stream_of(f"{bucket}/{PATTERN}")
    shards, counts = stream.set.shards, stream.set.counts
    items = iter(stream)
    first = [next(items)]
    fsspec.filesystem("s3").rm(shards[2])  # while the first shard is read
    items = first + list(items)
    assert len(items) == sum(counts)  # every process still takes its steps
    assert [item[3] for item in items].count(MISSING) == counts[2]
    assert all(item[3] is None for item in items if item[3] != MISSING)
    err = capsys.readouterr().err
    assert f"warning: shard {shards[2]} could not be read to its end" in err and "unreadable" in err


@pytest.mark.slow  # over 2 s
def test_a_server_outage_is_retried_and_the_shard_read_whole(bucket, s3, s3_server, capsys):
    """The server stops after the first image and comes back 3 s later: the next shard's read is
    retried with back-off (data/remote.RetryingReader), and every image arrives. Over https:// (here
    the server's plain HTTP), where fsspec does not retry (s3fs and botocore retry on their own)."""
    stream = stream_of(f"{web_url(s3, bucket)}/{PATTERN}")
    items = iter(stream)
    first = [next(items)]
    s3_server.stop()
    back = threading.Timer(3, s3_server.start)
    back.start()
    try:
        items = first + list(items)
    finally:
        back.join()
    assert len(items) == len(stream.set) and all(item[3] is None for item in items)
    assert "trying again in" in capsys.readouterr().err
