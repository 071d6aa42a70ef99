"""predict.py --out over many images: rows written as they come and kept by a kill, --resume equal to
an uninterrupted run, files that are not ours refused, the capped table, torchrun's merge in input
order, and labelled --data scored as train.py --evaluate scores it."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import pytest
from helpers import CLASSES, ROOT, make_pattern_folder, one_error_line, save_tiny_vit

import predict
from vitclassifier.inference import outfile
from vitclassifier.inference.batch import TABLE_ROWS
from vitclassifier.inference.outfile import journal_path, journals_of

BATCH = 4


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """27 images in three class folders, with an unreadable file among them."""
    root = make_pattern_folder(tmp_path_factory.mktemp("many") / "images", per_class=9, size=32)
    (root / "plain" / "plain_004b.png").write_bytes(b"not an image")
    return root


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A tiny ViT whose classes are the folders' (untrained: its answers are arbitrary but fixed)."""
    return save_tiny_vit(tmp_path_factory.mktemp("vit3"), labels=CLASSES)


def predict_into(capsys, out, folder, model, *extra):
    code = predict.main(["--model", str(model), "--image", str(folder), "--batch-size", str(BATCH),
                         "--out", str(out), *extra])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def interrupt_after(monkeypatch, batches: int) -> None:
    """Ctrl-C once ``batches`` batches are in the journal."""
    write, calls = outfile.Journal.write, []

    def write_then_interrupt(self, rows):
        write(self, rows)
        calls.append(rows)
        if len(calls) == batches:
            raise KeyboardInterrupt

    monkeypatch.setattr(outfile.Journal, "write", write_then_interrupt)


def killed_script(folder_of_script, batches: int):
    """A predict.py that SIGKILLs itself after ``batches`` batches, mid-way through writing a row."""
    script = folder_of_script / "predict_killed.py"
    script.write_text(
        f"import os, signal, sys\nsys.path.insert(0, {str(ROOT)!r})\nimport predict\n"
        "from vitclassifier.inference import outfile\nwrite, calls = outfile.Journal.write, []\n\n"
        "def killed(self, rows):\n    write(self, rows)\n    calls.append(1)\n"
        f"    if len(calls) == {batches}:\n"
        "        self.handle.write(b'{\"path\": \"half a row')\n        self.handle.flush()\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n\n"
        "outfile.Journal.write = killed\nsys.exit(predict.main(sys.argv[1:]))\n")
    return script


@pytest.mark.slow
def test_a_killed_run_keeps_its_rows_and_resume_equals_an_uninterrupted_run(tmp_path, folder, model, capsys):
    whole = tmp_path / "whole.jsonl"
    code, _, err = predict_into(capsys, whole, folder, model)
    assert code == 1 and "1 of 28 input(s) could not be predicted" in err  # the unreadable file
    out = tmp_path / "killed.jsonl"
    command = [sys.executable, str(killed_script(tmp_path, 3)), "--model", str(model), "--image", str(folder),
               "--batch-size", str(BATCH), "--out", str(out)]
    killed = subprocess.run(command, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert killed.returncode == -signal.SIGKILL and not out.exists()
    lines = journal_path(out, 0, 1).read_bytes().split(b"\n")
    assert lines[1:-1] == whole.read_bytes().split(b"\n")[: 3 * BATCH]  # every finished row, exactly
    assert lines[-1].startswith(b'{"path": "half')  # and the row the kill cut
    code, _, err = predict_into(capsys, out, folder, model, "--resume")
    assert code == 1, err
    assert out.read_bytes() == whole.read_bytes() and journals_of(out) == []


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_resume_after_ctrl_c_writes_what_an_uninterrupted_run_writes(tmp_path, folder, model, capsys,
                                                                      monkeypatch, suffix):
    whole, out = tmp_path / f"whole{suffix}", tmp_path / f"part{suffix}"
    predict_into(capsys, whole, folder, model)
    interrupt_after(monkeypatch, 2)
    code, _, err = predict_into(capsys, out, folder, model)
    assert code == 130 and "--resume" in err and not out.exists()
    monkeypatch.undo()
    code, _, err = predict_into(capsys, out, folder, model, "--resume")
    assert code == 1, err
    if suffix == ".csv":
        assert out.read_bytes() == whole.read_bytes()
        assert out.read_text().splitlines()[0] == "path,label,label_1,label_2,label_3,confidence_1," \
                                                  "confidence_2,confidence_3,error"
    else:
        import pyarrow.parquet as pq
        assert pq.read_table(out).equals(pq.read_table(whole)) and pq.read_table(out).num_rows == 28


def test_files_not_ours_and_other_runs_are_refused(tmp_path, folder, model, capsys, monkeypatch):
    theirs = tmp_path / "scores.csv"
    theirs.write_text("name,score\na.jpg,1\n")
    code, _, err = predict_into(capsys, theirs, folder, model)
    one_error_line(err, "--out", "not a prediction file of this tool")
    assert code == 2 and theirs.read_text() == "name,score\na.jpg,1\n" and journals_of(theirs) == []

    out = tmp_path / "ours.jsonl"
    interrupt_after(monkeypatch, 1)
    assert predict_into(capsys, out, folder, model)[0] == 130
    monkeypatch.undo()
    journal = journal_path(out, 0, 1).read_bytes()
    for extra, needle in ((), "--resume"), (("--resume", "--top-k", "2"), "another run"):
        code, _, err = predict_into(capsys, out, folder, model, *extra)
        one_error_line(err, needle)
        assert code == 2 and journal_path(out, 0, 1).read_bytes() == journal  # untouched
    assert predict_into(capsys, out, folder, model, "--overwrite")[0] == 1
    code, _, err = predict_into(capsys, out, folder, model)
    one_error_line(err, "already holds predictions", "--overwrite")
    with pytest.raises(SystemExit):
        predict.parse_args(["--image", "x.jpg", "--out", "rows.txt"])
    assert "must end in .jsonl, .csv, .parquet" in capsys.readouterr().err


def test_the_table_shows_the_first_rows_and_says_where_the_rest_went(tmp_path, folder, model, capsys):
    out = tmp_path / "rows.jsonl"
    code, stdout, err = predict_into(capsys, out, folder, model, "--top-k", "1")
    names = [line for line in stdout.splitlines() if line.startswith(str(folder))]
    readable = [line for line in out.read_text().splitlines() if '"error": null' in line]
    assert len(names) == TABLE_ROWS and names[0].endswith("horizontal_000.png")
    rest = len(readable) - TABLE_ROWS
    assert f"... and {rest} more prediction(s) not shown: every row is in {out}" in stdout
    assert "error: " in err and "plain_004b.png" in err


@pytest.mark.slow
def test_torchrun_merges_the_processes_rows_in_input_order(tmp_path, folder, model, capsys):
    one, two = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
    predict_into(capsys, one, folder, model)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               str(ROOT / "predict.py"), "--model", str(model), "--image", str(folder), "--batch-size",
               str(BATCH), "--out", str(two), "--device", "cpu"]
    process = subprocess.run(command, capture_output=True, text=True, timeout=300,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert "Predictions of 28 image(s)" in process.stderr, process.stderr[-3000:]
    assert two.read_bytes() == one.read_bytes() and journals_of(two) == []


def test_a_label_file_is_predicted_and_scored_as_evaluate_scores_it(tmp_path, folder, model, capsys):
    import train
    labels = folder.parent / "labels.csv"  # beside the images: its paths are relative to its folder
    images = sorted(folder.rglob("*_00[0-5].png"))
    rows = [f"{path.relative_to(folder.parent)},{path.parent.name}" for path in images]
    labels.write_text("image,label\n" + "\n".join(rows) + "\n")
    out = tmp_path / "scored.csv"
    code = predict.main(["--model", str(model), "--data", str(labels), "--out", str(out)])
    predicted, err = capsys.readouterr()
    assert code == 0 and out.read_text().splitlines()[0].endswith(",error,true_label"), err
    assert train.main(["--evaluate", "--model", str(model), "--data", str(labels)]) == 0
    evaluated = capsys.readouterr().out
    figures = re.compile(r"(\d+) images \| .*acc ([\d.]+) top3 ([\d.]+) macro-F1 ([\d.]+) \| calibration "
                         r"error ([\d.]+)%")
    assert figures.search(predicted).groups() == figures.search(evaluated).groups()
    assert figures.search(predicted).group(1) == str(len(rows))


def test_shards_are_resumed_where_the_run_stopped(tmp_path, folder, model, capsys, monkeypatch):
    from vitclassifier.data.shardwriter import to_shards
    shards = tmp_path / "shards"
    to_shards(folder, shards, 0.5, 0, 3)  # the validation half in shards of 3: what --data predicts
    whole, out = tmp_path / "whole.jsonl", tmp_path / "part.jsonl"
    argv = ["--model", str(model), "--data", str(shards), "--batch-size", str(BATCH)]
    predict.main([*argv, "--out", str(whole)])
    interrupt_after(monkeypatch, 1)
    assert predict.main([*argv, "--out", str(out)]) == 130
    monkeypatch.undo()
    predict.main([*argv, "--out", str(out), "--resume"])
    rows = whole.read_text().splitlines()
    assert len(rows) > 2 * BATCH and all('"true_label": "' in row for row in rows)
    assert out.read_bytes() == whole.read_bytes()  # no image twice, none left out
    scored = [row for row in rows if '"error": null' in row]  # the unreadable file is in a shard too
    assert f"{len(scored)} images | acc" in capsys.readouterr().out
