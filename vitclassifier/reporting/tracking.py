"""Experiment tracking for train.py: MLflow or TensorBoard, or nothing.

    tracker = make_tracker("mlflow", None, Path("checkpoints"), run_name="shapes")
    tracker.log_params(vars(args))
    tracker.log_epoch(1, {"val_acc": 0.8})
    tracker.log_files([Path("checkpoints/metrics.csv")])
    tracker.log_model(Path("checkpoints/best"))
    tracker.close()

Both packages are optional: they are imported only when their kind is asked for, and a missing
one is a UserError naming the pip command. MLflow writes to a SQLite store under
OUTPUT_DIR/mlruns unless a tracking URI (a server, or another store) is given; TensorBoard writes
event files into OUTPUT_DIR/tensorboard/RUN_NAME (default: the start time).
"""
from __future__ import annotations

import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

from vitclassifier.errors import UserError
from vitclassifier.text import printable, shell_word

KINDS = ("mlflow", "tensorboard")
DATABASES = ("sqlite", "postgresql", "mysql", "mssql")  # MLflow's SQLAlchemy stores (scheme+driver too)
EXPERIMENT = "vit-classifier"
MLFLOW_PARAM_LENGTH = 6000  # MLflow refuses longer parameter values
MLFLOW_BATCH_PARAMS = 100  # and more parameters in one request
PROBE_SECONDS = 5.0  # how long a tracking server gets to answer before training starts
# MLflow retries a failed request 7 times with exponential back-off (minutes of silence per call);
# a run keeps these lower bounds unless the user set MLflow's own variables.
MLFLOW_HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}


def check_tracking_server(tracking_uri: str | None, timeout: float = PROBE_SECONDS) -> None:
    """Before anything is trained: an http(s) --tracking-uri must answer within ``timeout`` seconds
    (any HTTP answer will do: a server behind a login still exists). Other stores (sqlite:, file:,
    databricks) are opened by MLflow itself, at once."""
    if tracking_uri is None or urlparse(tracking_uri).scheme not in ("http", "https"):
        return
    try:
        with urllib.request.urlopen(tracking_uri.rstrip("/") + "/health", timeout=timeout):
            return
    except urllib.error.HTTPError:
        return  # an answer, if not a welcome one: MLflow's own error says more
    except (urllib.error.URLError, OSError, ValueError) as error:
        reason = getattr(error, "reason", None) or error
        raise UserError(
            f"--tracking-uri {printable(tracking_uri)}: no MLflow server answered within {timeout:g} s "
            f"({printable(reason)}); nothing was trained. Start the server (mlflow server --host HOST "
            f"--port PORT), correct the address, or leave out --tracking-uri to log into "
            f"OUTPUT_DIR/mlruns") from None


def artifact_location(tracking_uri: str | None, output_dir: Path) -> str | None:
    """Where a new experiment keeps its files (the best model, the pictures), as a file URI; never
    MLflow's ./mlruns in the current folder. A database store (sqlite:, postgresql:, ...) keeps only
    the metrics: the files go beside a SQLite file (x.db: x-artifacts), else into OUTPUT_DIR/mlruns/
    artifacts as with the default store. A server or a file: store decides for itself (None). A
    SQLite URI with two slashes, which SQLAlchemy refuses with a traceback, is one clear line."""
    beside_the_run = (output_dir / "mlruns" / "artifacts").resolve().as_uri()
    parsed = urlparse(tracking_uri or "sqlite://")
    if parsed.scheme.split("+")[0] not in DATABASES:
        return None
    if parsed.scheme == "sqlite" and parsed.netloc:
        raise UserError(f"--tracking-uri {printable(tracking_uri)}: a SQLite store is named with three "
                        f"slashes: sqlite:///{printable(parsed.netloc + parsed.path)} (relative to the "
                        f"current folder) or sqlite:////absolute/path.db")
    database = parsed.path[1:]  # sqlite:///x.db: x.db; sqlite:////tmp/x.db: /tmp/x.db
    if parsed.scheme != "sqlite" or database in ("", ":memory:"):
        return beside_the_run
    return Path(database).resolve().with_name(f"{Path(database).stem}-artifacts").as_uri()


def database_errors() -> tuple[type[Exception], ...]:
    """What MLflow's database stores raise for a malformed URI (SQLAlchemy's, outside MlflowException)."""
    try:
        from sqlalchemy.exc import ArgumentError
    except ImportError:  # no SQLAlchemy: no database store either
        return ()
    return (ArgumentError,)


def numbers(metrics: dict) -> dict[str, float]:
    """The metrics that have a value, as floats."""
    return {key: float(value) for key, value in metrics.items() if value not in (None, "")}


class Tracker:
    """Tracks nothing: what train.py gets without --track. Also the interface of the real ones."""

    def log_params(self, params: dict) -> None:
        """The run's options (values are logged as text)."""

    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        """One epoch's metrics, with the epoch as the step. Numbers as text are fine (metrics.csv
        rows); empty values (a metric this run does not compute) are left out."""

    def log_files(self, paths: list[Path]) -> None:
        """Pictures (PNG) and tables (CSV) the run wrote."""

    def log_model(self, directory: Path) -> None:
        """The best checkpoint directory."""

    def close(self, status: str = "FINISHED") -> None:
        """End the run; ``status`` is FINISHED, FAILED or KILLED (MLflow's run states)."""

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        self.close(
            "FINISHED" if kind is None else "KILLED" if issubclass(kind, KeyboardInterrupt) else "FAILED"
        )


class MlflowTracker(Tracker):
    """One MLflow run, through MlflowClient (no global state, so several trackers can coexist)."""

    def __init__(self, tracking_uri: str | None, output_dir: Path, run_name: str | None):
        try:
            from mlflow.exceptions import MlflowException
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise UserError(
                "--track mlflow needs the mlflow package: pip install mlflow "
                "(or pip install -r requirements-extras.txt)"
            ) from None
        check_tracking_server(tracking_uri)
        for name, value in MLFLOW_HTTP_DEFAULTS.items():
            os.environ.setdefault(name, value)
        artifacts = artifact_location(tracking_uri, output_dir)
        if (
            tracking_uri is None
        ):  # a local store; MLflow's plain-folder store is deprecated, SQLite is its default
            store = (output_dir / "mlruns").resolve()
            store.mkdir(parents=True, exist_ok=True)
            tracking_uri = f"sqlite:///{store / 'mlflow.db'}"
        try:
            self.client = MlflowClient(tracking_uri=tracking_uri)
            experiment = self.client.get_experiment_by_name(EXPERIMENT)
            experiment_id = (
                experiment.experiment_id
                if experiment
                else self.client.create_experiment(EXPERIMENT, artifact_location=artifacts)
            )
            self.run_id = self.client.create_run(experiment_id, run_name=run_name).info.run_id
        except (MlflowException, *database_errors()) as error:  # also for a server that cannot be reached
            raise UserError(
                f"cannot start an MLflow run at --tracking-uri {tracking_uri}: {str(error).splitlines()[0]}"
            ) from None
        self.running, self.uri = True, tracking_uri
        print(f"MLflow run {self.run_id} in {tracking_uri} (experiment {EXPERIMENT!r})")

    def send(self, what: str, request: Callable[[], object]) -> None:
        """One request to MLflow. If the server is lost mid-run, training goes on and keeps its files:
        one warning, and tracking is off for the rest of the run."""
        if not self.running:
            return
        from mlflow.exceptions import MlflowException
        try:
            request()
        except (MlflowException, OSError) as error:
            self.running = False
            print(f"warning: MLflow at {printable(self.uri)} failed to log {what} "
                  f"({printable(str(error).splitlines()[0] if str(error) else type(error).__name__)}); "
                  f"tracking is off for the rest of this run, training goes on", file=sys.stderr)

    def log_params(self, params: dict) -> None:
        from mlflow.entities import Param

        items = [Param(key, str(value)[:MLFLOW_PARAM_LENGTH]) for key, value in params.items()]
        for start in range(0, len(items), MLFLOW_BATCH_PARAMS):
            batch = items[start : start + MLFLOW_BATCH_PARAMS]
            self.send("the options", lambda batch=batch: self.client.log_batch(self.run_id, params=batch))

    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        rows = [Metric(key, value, now, epoch) for key, value in numbers(metrics).items()]
        self.send(f"epoch {epoch}", lambda: self.client.log_batch(self.run_id, metrics=rows))

    def log_files(self, paths: list[Path]) -> None:
        for path in paths:
            self.send(str(path), lambda path=path: self.client.log_artifact(self.run_id, str(path)))

    def log_model(self, directory: Path) -> None:
        self.send(str(directory), lambda: self.client.log_artifacts(self.run_id, str(directory),
                                                                    artifact_path=Path(directory).name))

    def close(self, status: str = "FINISHED") -> None:
        # the first status given sticks, e.g. KILLED before the with-block ends
        self.send("the run's end", lambda: self.client.set_terminated(self.run_id, status))
        self.running = False


class TensorboardTracker(Tracker):
    """Scalars per epoch, the options and CSV tables as text, PNG pictures as images."""

    def __init__(self, log_dir: Path):
        try:
            import tensorboard  # noqa: F401  (SummaryWriter's own message does not say how to install it)
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise UserError(
                "--track tensorboard needs the tensorboard package: pip install tensorboard "
                "(or pip install -r requirements-extras.txt)"
            ) from None
        self.writer = SummaryWriter(log_dir=str(log_dir))
        print(f"TensorBoard events in {printable(log_dir)} "
              f"(view: tensorboard --logdir {shell_word(log_dir)})")

    def log_params(self, params: dict) -> None:
        table = "\n".join(f"| {key} | {value} |" for key, value in params.items())
        self.writer.add_text("params", f"| option | value |\n|---|---|\n{table}")

    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        for key, value in numbers(metrics).items():
            self.writer.add_scalar(key, value, epoch)
        self.writer.flush()  # so a TensorBoard watching the run sees each epoch as it ends

    def log_files(self, paths: list[Path]) -> None:
        import numpy as np
        from PIL import Image

        for path in map(Path, paths):
            if path.suffix.lower() == ".png":
                with Image.open(path) as image:
                    self.writer.add_image(path.stem, np.asarray(image.convert("RGB")), dataformats="HWC")
            else:  # tables: shown as text (four leading spaces make Markdown keep the columns)
                self.writer.add_text(
                    path.stem, "\n".join("    " + line for line in path.read_text().splitlines())
                )

    def log_model(self, directory: Path) -> None:
        # TensorBoard stores no files; record where the model is
        self.writer.add_text("best_model", str(Path(directory).resolve()))

    def close(self, status: str = "FINISHED") -> None:
        self.writer.close()


def make_tracker(
    kind: str | None, tracking_uri: str | None, output_dir: Path, run_name: str | None = None
) -> Tracker:
    """The tracker for ``--track KIND`` (None: one that does nothing)."""
    if kind is None:
        return Tracker()
    if kind not in KINDS:
        raise UserError(f"--track {kind!r}: choose from {', '.join(KINDS)}")
    if kind == "mlflow":
        return MlflowTracker(tracking_uri, Path(output_dir), run_name)
    if tracking_uri is not None:
        raise UserError("--tracking-uri is for --track mlflow; TensorBoard writes into --output-dir")
    # one sub-folder per run: TensorBoard shows each as its own curve
    return TensorboardTracker(Path(output_dir) / "tensorboard" / (run_name or time.strftime("%Y%m%d-%H%M%S")))
