"""Odd files in a data folder, through listing, decoding, the audit, training and prediction: a named
pipe, links to /dev/zero, names that are not UTF-8. Each is skipped and named, refused in one line,
or read like any other file; nothing hangs. (Huge pictures in small files: data/test_pixel_budget.py.)

Whatever could hang runs under a deadline (or in a child process with a timeout); whatever could
read /dev/zero for ever runs in a child process with a capped address space."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT, TRAIN_OPTIONS
from PIL import Image

from vitclassifier.data.folders import list_images, utf8_safe
from vitclassifier.data.images import load_image
from vitclassifier.data.sources import data_fingerprint
from vitclassifier.inference.predict import expand_inputs, predictions_json

LATIN1 = os.fsdecode(b"caf\xe9.jpg")  # a Latin-1 name from an old archive, as Python sees it

pytestmark = pytest.mark.skipif(sys.platform != "linux",
                                reason="named pipes, /dev/zero, byte file names, ru_maxrss in KiB")


def release(fifo: Path) -> None:
    """Open and close the writing end of ``fifo``: a reader blocked on it gets an end of file."""
    with contextlib.suppress(OSError):
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))


@contextlib.contextmanager
def deadline(seconds: int, fifo: Path | None = None):
    """Fail, rather than hang for ever, when the block takes over ``seconds`` (releasing ``fifo``,
    so that a thread blocked on it ends too)."""
    def expired(signum, frame):
        if fifo is not None:
            release(fifo)
        raise TimeoutError(f"still blocked after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def square(path: Path | bytes, colour=(200, 30, 60), size: int = 32) -> None:
    Image.new("RGB", (size, size), colour).save(path)


@pytest.fixture
def odd_data(tmp_path) -> Path:
    """data/a and data/b with two small images each, a named pipe a/x.jpg, links b/zero1.jpg and
    b/zero2.jpg to /dev/zero, and a Latin-1 a/café.jpg."""
    root = tmp_path / "data"
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        for i in range(2):
            square(root / name / f"{name}{i}.png", (100 * i, 50, 200 if name == "a" else 0))
    square(os.fsencode(root / "a") + b"/caf\xe9.jpg", (9, 9, 9))
    os.mkfifo(root / "a" / "x.jpg")
    for link in ("zero1.jpg", "zero2.jpg"):
        (root / "b" / link).symlink_to("/dev/zero")
    yield root
    release(root / "a" / "x.jpg")


def child(code: str, env: dict | None = None, timeout: int = 120, max_gib: int = 8) -> dict:
    """Run ``code`` in a fresh Python whose address space is capped at ``max_gib``; its last stdout
    line is JSON."""
    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (max_gib << 30, max_gib << 30))

    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, preexec_fn=cap, env={**os.environ, **(env or {})})
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def assert_strict_utf8(text: str) -> dict:
    """``text`` is JSON that a strict parser reads: valid UTF-8, no lone surrogate anywhere."""
    data = json.loads(text.encode("utf-8").decode("utf-8"))
    json.dumps(data, ensure_ascii=False).encode("utf-8")  # raises on a lone surrogate
    return data


def test_listing_skips_a_named_pipe_and_device_links_and_names_them(odd_data, capsys):
    with deadline(10):
        a, b = list_images(odd_data / "a"), list_images(odd_data / "b")
    assert [p.name for p in a] == ["a0.png", "a1.png", LATIN1]
    assert [p.name for p in b] == ["b0.png", "b1.png"]
    err = capsys.readouterr().err
    assert f"note: skipped {odd_data / 'a' / 'x.jpg'}: a named pipe (FIFO)" in err
    for link in ("zero1.jpg", "zero2.jpg"):
        assert f"note: skipped {odd_data / 'b' / link}: a character device" in err


def test_decoding_refuses_a_named_pipe_and_dev_zero_at_once(odd_data):
    for name, kind in (("a/x.jpg", "named pipe"), ("b/zero1.jpg", "character device")):
        with deadline(10, odd_data / "a" / "x.jpg"), pytest.raises(OSError, match=kind):
            load_image(odd_data / name)


def test_the_decode_cache_and_predict_inputs_do_not_block_on_a_named_pipe(odd_data):
    from vitclassifier.data.dataset import ImageFolderDataset
    from vitclassifier.data.transforms import Preprocessing, eval_transform
    fifo = odd_data / "a" / "x.jpg"
    dataset = ImageFolderDataset([(fifo, 0), (odd_data / "a" / "a0.png", 0)],
                                 eval_transform(Preprocessing(image_size=32)), 36)
    with deadline(20, fifo):
        assert dataset.fill_cache(10**6, num_threads=2)[0] == 2
        paths, missing = expand_inputs([str(fifo), str(odd_data / "a")])
    assert "named pipe" in dataset.cache[0]
    assert fifo not in paths and len(paths) == 3
    assert missing == [(str(fifo), "not a regular file (a pipe or a device), skipped")]


@pytest.mark.slow
def test_duplicates_skip_dev_zero_and_hash_big_files_in_chunks(tmp_path):
    """In a child capped at 2 GiB: reading /dev/zero whole would end in MemoryError, reading a
    64 MiB file whole would raise the peak by 64 MiB."""
    for name in ("zero1.jpg", "zero2.jpg"):
        (tmp_path / name).symlink_to("/dev/zero")
    for name in ("big1.jpg", "big2.jpg"):
        with open(tmp_path / name, "wb") as file:
            file.truncate(64 << 20)  # sparse: costs no disk
    code = f"""if True:
        import json, resource
        from pathlib import Path
        from vitclassifier.data.audit import find_duplicates
        paths = sorted(Path({str(tmp_path)!r}).iterdir())
        peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        before = peak()
        groups = find_duplicates(paths)
        print(json.dumps({{"groups": [[p.name for p in g] for g in groups], "over_mb": peak() - before}}))
    """
    result = child(code, {"OPENBLAS_NUM_THREADS": "1"}, timeout=60, max_gib=2)
    assert result["groups"] == [["big1.jpg", "big2.jpg"]]
    assert result["over_mb"] < 16, result


@pytest.mark.slow
def test_check_data_names_the_pipe_and_the_dev_zero_links_and_finishes(odd_data):
    command = [sys.executable, "classifier.py", "--check-data", str(odd_data), "--image-size", "32"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120,
                          preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30)))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    for name in ("a/x.jpg", "b/zero1.jpg", "b/zero2.jpg"):
        assert f"note: skipped {odd_data / name}: " in done.stderr
    assert "Data: 2 classes" in done.stdout


def test_the_fingerprint_takes_latin1_names_and_keeps_utf8_ones(tmp_path):
    root = tmp_path / "data"
    old_style = hashlib.sha1(b"a/caf\xc3\xa9.jpg\t0\n").hexdigest()  # how UTF-8 names always hashed
    assert data_fingerprint([(root / "a" / "café.jpg", 0)], root) == old_style
    latin1 = data_fingerprint([(root / "a" / LATIN1, 0)], root)
    assert latin1 == hashlib.sha1(b"a/caf\xe9.jpg\t0\n").hexdigest() != old_style


def test_prediction_json_is_strict_utf8_for_any_file_name(tmp_path):
    path = str(tmp_path / LATIN1)
    results = [{"path": path, "label": "a", "predictions": [{"label": "a", "confidence": 1.0}]}]
    report = predictions_json(tmp_path / "model", results, [(path, f"OSError: cannot read {path}")])
    data = assert_strict_utf8(report)
    assert data["results"][0]["path"] == utf8_safe(path) == str(tmp_path / "caf\\xe9.jpg")
    assert data["errors"][0]["error"] == f"OSError: cannot read {tmp_path}/caf\\xe9.jpg"
    assert utf8_safe("café/猫.jpg") == "café/猫.jpg"  # UTF-8 names stay as they are


@pytest.mark.slow
def test_latin1_names_train_predict_and_check_like_any_other(odd_data, tiny_vit, tmp_path, capsys):
    """A Latin-1 file and a Latin-1 class folder (the pipe is there too; the /dev/zero links are
    left to the capped child processes above)."""
    import classifier
    import predict
    import train
    for link in ("zero1.jpg", "zero2.jpg"):
        (odd_data / "b" / link).unlink()
    os.rename(odd_data / "b", os.fsdecode(os.fsencode(odd_data) + b"/b\xe4r"))
    out = tmp_path / "run"
    with deadline(300, odd_data / "a" / "x.jpg"):
        assert train.main(["--data", str(odd_data), "--model", str(tiny_vit), "--output-dir", str(out),
                           *TRAIN_OPTIONS, "--epochs", "1", "--batch-size", "2"]) == 0
        code = predict.main(["--model", str(out / "best"), "--image", str(odd_data), "--json",
                             str(tmp_path / "p.json"), "--visualize", str(tmp_path / "p.png")])
        assert classifier.main(["--check-data", str(odd_data), "--json", str(tmp_path / "c.json")]) == 0
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "caf\\xe9.jpg" in captured.out  # the table, printed on a strict UTF-8 stdout
    data = assert_strict_utf8((tmp_path / "p.json").read_text(encoding="utf-8"))
    assert {Path(r["path"]).name for r in data["results"]} >= {"caf\\xe9.jpg", "b0.png"}
    assert {r["label"] for r in data["results"]} <= {"a", "b\\xe4r"}
    check = assert_strict_utf8((tmp_path / "c.json").read_text(encoding="utf-8"))
    assert sorted(check["classes"]) == ["a", "b\\xe4r"]


def test_a_captured_stdout_refuses_lone_surrogates_as_a_utf8_terminal_does(capsys):
    """What the test above relies on: printing a Latin-1 name unescaped would raise."""
    with pytest.raises(UnicodeEncodeError):
        print(LATIN1)
