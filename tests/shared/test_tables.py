"""vitclassifier/tables.py: names that a spreadsheet would run as formulas are written as text in
every CSV file we write (per_class.csv, confusion_matrix.csv, metrics.csv, the audit's findings),
numbers stay numbers, and --exclude reads the audit's paths back as they were."""
from __future__ import annotations

import csv
import io

import pytest
import torch

from vitclassifier.data.exclude import read_exclude_list
from vitclassifier.deep_audit.outputs import COLUMNS, write_csv
from vitclassifier.reporting.metrics import write_metrics
from vitclassifier.reporting.report import write_confusion_table, write_per_class
from vitclassifier.tables import csv_text, original_cell, safe_cell

HOSTILE = ["=HYPERLINK(\"http://evil\",\"x\")", "+1+cmd|' /C calc'!A0", "-2+3", "@SUM(A1:A9)", "\tname",
           "\rname", "'=quoted"]


def cells(path) -> list[list[str]]:
    return list(csv.reader(io.StringIO(path.read_text())))


@pytest.mark.parametrize("name", HOSTILE)
def test_a_formula_is_written_as_text_and_read_back_as_it_was(name):
    written = safe_cell(name)
    assert written == "'" + name and original_cell(written) == name


@pytest.mark.parametrize("value", ["-0.5000", "+1e-05", "-3", "-.25", 0.5, -2, "cat", "", "a=b", "naïve-1"])
def test_numbers_and_plain_names_are_left_as_they_are(value):
    assert safe_cell(value) == value and csv_text([[value, "x"]]) == f"{value},x\r\n"


def test_the_report_tables_neutralise_class_names_not_numbers(tmp_path):
    labels = ["=HYPERLINK(\"http://evil\")", "@SUM(1)", "cat"]
    confusion = torch.tensor([[2, 1, 0], [0, 3, 0], [1, 0, 4]])
    write_per_class(confusion, labels, tmp_path / "per_class.csv")
    rows = cells(tmp_path / "per_class.csv")
    assert [row[0] for row in rows[1:]] == ["'" + labels[0], "'@SUM(1)", "cat"]
    assert rows[1][1:] == ["0.6667", "0.6667", "0.6667", "3"]
    write_confusion_table(torch.full((3, 3), -0.5), labels, tmp_path / "confusion_matrix.csv")
    rows = cells(tmp_path / "confusion_matrix.csv")
    assert rows[0] == ["true \\ predicted", "'" + labels[0], "'@SUM(1)", "cat"]
    assert rows[1] == ["'" + labels[0], "-0.5000", "-0.5000", "-0.5000"]  # numbers: no quote


def test_metrics_keep_their_numbers(tmp_path):
    write_metrics(tmp_path / "metrics.csv", [{"epoch": 1, "train_loss": "-0.250000", "lr": "1.000e-04"}])
    rows = cells(tmp_path / "metrics.csv")
    assert rows[1][:2] == ["1", "-0.250000"] and "1.000e-04" in rows[1]


def test_the_audit_findings_are_neutralised_and_exclude_reads_them_back(tmp_path):
    paths = ["=cmd|' /C calc'!A0.jpg", "-x.jpg", "'already quoted.jpg", "cat/plain.jpg"]
    rows = [{"path": path, "split": "train", "given_label": "@evil", "suggested_label": "cat",
             "label_quality": -0.125} for path in paths]
    write_csv(tmp_path / "label_issues.csv", COLUMNS["label_issues"], rows)
    written = cells(tmp_path / "label_issues.csv")[1:]
    assert [row[0] for row in written] == ["'" + paths[0], "'-x.jpg", "''already quoted.jpg", "cat/plain.jpg"]
    assert all(row[2] == "'@evil" and row[4] == "-0.125" for row in written)
    assert read_exclude_list(tmp_path / "label_issues.csv") == paths
