"""Shared fixtures: a tiny ViT saved like a Hub checkpoint, a small generated data set, a trained run,
its int8 OpenVINO export, a 1 MiB tmpfs (a real full disk) and a local S3-compatible server.
The functions they are built with are in helpers.py.

Everything is built here, offline: no weights or data are downloaded, nothing is mocked.
"""
from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT, free_port, make_pattern_folder, run_args, s3_environment, save_tiny_vit

if str(ROOT) not in sys.path:  # the commands (train.py, ...) and the vitclassifier package
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never wait on the network in tests
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_vit(tmp_path_factory) -> Path:
    return save_tiny_vit(tmp_path_factory.mktemp("tiny-vit"))


@pytest.fixture(scope="session")
def pattern_data(tmp_path_factory) -> Path:
    return make_pattern_folder(tmp_path_factory.mktemp("patterns") / "data", per_class=400)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, tiny_vit, pattern_data) -> Path:
    """A 2-epoch fine-tuning of the tiny 1000-class ViT to our 3 classes; returns its output dir."""
    import train
    out = tmp_path_factory.mktemp("run") / "checkpoints"
    assert train.main(run_args(out, pattern_data, tiny_vit)) == 0
    return out


@pytest.fixture(scope="session")
def multi_label_run(tmp_path_factory, tiny_vit) -> tuple[Path, Path]:
    """Generated scenes of several shapes each and a 2-epoch multi-label run of the tiny ViT on them;
    returns (the label file, the run's output dir)."""
    import classifier
    import train
    data = tmp_path_factory.mktemp("scenes")
    assert classifier.main(["--generate-data", "--multi-label", "--out", str(data), "--per-class", "16",
                            "--classes", "circle,star,cross", "--image-size", "32"]) == 0
    out = tmp_path_factory.mktemp("multi-label-run") / "checkpoints"
    assert train.main([*run_args(out, data / "labels.csv", tiny_vit), "--recipe", "fixed"]) == 0
    return data / "labels.csv", out


@pytest.fixture(scope="session")
def openvino_int8_export(trained_run, pattern_data, tmp_path_factory) -> tuple[Path, str]:
    """The trained checkpoint exported by export.py as int8 OpenVINO, calibrated on the pattern
    images; returns (the .xml path, export.py's report)."""
    for package in ("openvino", "nncf"):
        pytest.importorskip(package, reason="needs the extras: pip install -r requirements-extras.txt")
    import contextlib
    import io

    import export
    out, report = tmp_path_factory.mktemp("openvino") / "model.xml", io.StringIO()
    with contextlib.redirect_stdout(report):
        code = export.main(["--model", str(trained_run / "best"), "--format", "openvino-int8",
                            "--out", str(out), "--calibration-images", str(pattern_data),
                            "--bench-rounds", "1"])
    assert code == 0, report.getvalue()
    return out, report.getvalue()


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs: a real full disk. Needs root and permission to mount (a container may lack it)."""
    if os.name != "posix" or os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    yield disk
    subprocess.run(["umount", str(disk)], check=True)


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 server on a free port of this machine, real HTTP (moto[server], requirements-dev.txt);
    its data lives in this process, so it may stop and start again with the same objects."""
    server_module = pytest.importorskip("moto.server", reason="needs moto[server]: requirements-dev.txt")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # the server's request log is not our output
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def s3(s3_server, monkeypatch) -> str:
    """The S3 server's endpoint and credentials in this process's environment (and its children's), as a
    user sets them; fsspec's cached clients are dropped, so that each test meets the environment it sets."""
    s3fs = pytest.importorskip("s3fs", reason="needs s3fs: requirements-extras.txt")
    environment = s3_environment(s3_server)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    s3fs.S3FileSystem.clear_instance_cache()
    yield environment["AWS_ENDPOINT_URL"]
    s3fs.S3FileSystem.clear_instance_cache()
