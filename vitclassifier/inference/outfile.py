"""predict.py --out FILE: the prediction file of a run over many images, safe to kill at any moment.

Rows are not held in memory: each process appends every finished batch to a journal of its own
beside FILE (``FILE.part-R-of-W``, JSON lines after one header line naming the run), flushed at
once, so a crash or a kill loses at most the batch in flight. At the end the journals are merged,
in input order, into FILE in the format its suffix names (``.jsonl``, ``.csv``, ``.parquet``),
written under a temporary name and put in place with ``os.replace``; then the journals go.
``--resume`` continues the journals (a half-written last line cut off), so the finished file is
the one an uninterrupted run writes. A FILE or journal this tool did not write is never touched,
and one from another run (model, inputs or options) is not continued.
"""
from __future__ import annotations

import glob
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from vitclassifier.errors import UserError
from vitclassifier.files import fsync_dir, write_via_temp
from vitclassifier.tables import csv_text
from vitclassifier.text import first_few

FORMATS = (".jsonl", ".csv", ".parquet")
HEADER = "vitclassifier_predictions"  # the key of a journal's first line
ROW_KEYS = ("path", "label", "labels", "confidences", "error")  # and true_label when the data is scored
ROW_GROUP = 10_000  # rows per parquet row group, and per CSV chunk
SYNC_SECONDS = 5.0  # a journal is flushed after every batch, fsynced at most this often
OURS_PARQUET = b"vitclassifier"  # the key in a parquet file's metadata


def journal_path(out: Path, rank: int, world: int) -> Path:
    return out.with_name(f"{out.name}.part-{rank}-of-{world}")


def journals_of(out: Path) -> list[Path]:
    """The journals beside ``out``, of any number of processes."""
    return sorted(Path(p) for p in glob.glob(glob.escape(str(out)) + ".part-*-of-*"))


def read_header(path: Path) -> dict | None:
    """A journal's header, or None when the file is not a journal of ours."""
    try:
        with open(path, "rb") as handle:
            header = json.loads(handle.readline(1 << 20))
    except (OSError, ValueError):
        return None
    return header if isinstance(header, dict) and HEADER in header else None


def is_our_output(out: Path) -> bool:
    """Does ``out`` hold a finished prediction file of ours (an empty file holds nothing to lose)?"""
    try:
        if out.stat().st_size == 0:
            return True
        if out.suffix.lower() == ".parquet":
            import pyarrow.parquet as pq
            return OURS_PARQUET in (pq.read_schema(out).metadata or {})
        with open(out, "rb") as handle:
            first = handle.readline(1 << 20).decode("utf-8")
        if out.suffix.lower() == ".csv":
            return first.split(",")[:3] == ["path", "label", "label_1"]
        row = json.loads(first)
        return isinstance(row, dict) and set(ROW_KEYS) <= set(row)
    except (OSError, ValueError, ImportError):  # pyarrow's ArrowInvalid is a ValueError
        return False


def claim_out(out: Path, run: str, world: int, resume: bool, overwrite: bool) -> bool:
    """May this run write ``out``? True: continue the journals there (--resume); False: start anew
    (the caller removes our old journals). Refused, as one UserError: files that are not ours, a
    finished file or an interrupted run without --resume or --overwrite, another run's journals."""
    journals = journals_of(out)
    headers = {path: read_header(path) for path in journals}
    foreign = [path.name for path, header in headers.items() if header is None]
    if foreign:
        raise UserError(f"--out {out}: {first_few(foreign)} beside it was not written by this tool; nothing "
                        f"was changed: move it away or give another --out")
    if out.exists() and not (out.is_file() and is_our_output(out)):
        raise UserError(f"--out {out} exists and is not a prediction file of this tool; nothing was "
                        f"changed: give another --out")
    if journals and not overwrite:
        if not resume:
            raise UserError(f"--out {out}: an interrupted prediction left {journals[0].name}; continue it "
                            f"with --resume, or start again with --overwrite")
        started = {header["world"] for header in headers.values()}
        if started != {world}:
            counts = first_few(sorted(map(str, started)))
            raise UserError(f"--out {out}: the interrupted prediction ran in {counts} process(es); --resume "
                            f"it with as many (torchrun --nproc-per-node)")
        if any(header["run"] != run for header in headers.values()):
            raise UserError(f"--out {out}: {journals[0].name} is of another run (another model, other "
                            f"inputs or options); --resume with the same ones, the paths written the same "
                            f"way, or start again with --overwrite")
        return True
    if out.exists() and not overwrite:
        finished = " (finished: nothing to resume)" if resume else ""
        raise UserError(f"--out {out} already holds predictions{finished}; replace them with --overwrite, "
                        f"or give another --out")
    return False


def lock(handle, path: Path) -> None:
    """An exclusive lock on an open journal, or one line saying which run holds it (POSIX flock)."""
    try:
        import fcntl
    except ImportError:  # Windows: no flock; one run per --out is up to the user
        return
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise UserError(f"--out: {path.name} is being written by another prediction; wait for it to "
                        f"finish, or give another --out") from None


def open_locked(path: Path):
    """``path`` opened for reading and writing (created if missing, never through a link), locked."""
    handle = os.fdopen(os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o666), "r+b")
    lock(handle, path)
    return handle


def remove_journals(out: Path) -> None:
    """--overwrite, or a new run: our journals beside ``out`` (claim_out checked they are ours), unless
    a running prediction holds one."""
    for path in journals_of(out):
        open_locked(path).close()
        path.unlink(missing_ok=True)


class Journal:
    """One process's rows, appended and flushed batch by batch, behind an exclusive lock (a second
    run on the same --out is refused while this one writes)."""

    def __init__(self, path: Path, header: dict, resume: bool):
        self.path, self.done, self.synced = path, 0, time.monotonic()
        exists = resume and path.exists()
        self.handle = open_locked(path)  # held for the whole run; emptied only once locked
        if exists:
            self.done = self._recover()
        else:
            self.handle.truncate()
            self.handle.write(json.dumps({HEADER: 1, **header}).encode() + b"\n")
            self.handle.flush()

    def _recover(self) -> int:
        """Count the whole rows and cut off what follows them (a line half-written by a kill)."""
        self.handle.seek(0)
        self.handle.readline()
        rows, end = 0, self.handle.tell()
        for line in self.handle:
            if not line.endswith(b"\n") or not _is_row(line):
                break
            rows, end = rows + 1, end + len(line)
        self.handle.seek(end)
        self.handle.truncate()
        return rows

    def write(self, rows: list[dict]) -> None:
        self.handle.write("".join(json.dumps(row) + "\n" for row in rows).encode())
        self.handle.flush()
        if time.monotonic() - self.synced > SYNC_SECONDS:
            os.fsync(self.handle.fileno())
            self.synced = time.monotonic()

    def close(self) -> None:
        self.handle.flush()
        os.fsync(self.handle.fileno())
        self.handle.close()


def _is_row(line: bytes) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


def merged_lines(journals: list[Path]) -> Iterator[bytes]:
    """The journals' rows in input order: process r predicted items r, r + W, r + 2W, ... so the
    rows are taken from each journal in turn."""
    handles = [open(path, "rb") for path in journals]  # noqa: SIM115 (closed below)
    try:
        for handle in handles:
            handle.readline()
        while True:
            for handle in handles:
                line = handle.readline()
                if not line:
                    if any(other.readline() for other in handles):
                        raise UserError(f"the journals {first_few([p.name for p in journals])} do not fit "
                                        f"together; start again with --overwrite")
                    return
                yield line
    finally:
        for handle in handles:
            handle.close()


def columns(k: int, scored: bool) -> list[str]:
    """The CSV header: the top-k flattened into label_i and confidence_i."""
    return (["path", "label", *(f"label_{i}" for i in range(1, k + 1)),
             *(f"confidence_{i}" for i in range(1, k + 1)), "error"] + (["true_label"] if scored else []))


def csv_row(row: dict, k: int, scored: bool) -> list[object]:
    labels, confidences = row["labels"], row["confidences"]
    pad = [""] * (k - len(labels))
    return ([row["path"], row["label"] or "", *labels, *pad, *confidences, *pad, row["error"] or ""]
            + ([row.get("true_label") or ""] if scored else []))


def write_rows(path: Path, form: str, lines: Iterable[bytes], k: int, scored: bool,
               seen: Callable[[dict], None]) -> None:
    """The rows of ``lines`` into ``path`` in the format ``form`` (a suffix of FORMATS), chunk by
    chunk; ``seen`` is called with every row (scoring)."""
    with open(path, "wb") as handle:
        if form == ".jsonl":
            for line in lines:
                seen(json.loads(line))
                handle.write(line)
            return
        if form == ".csv":
            handle.write(csv_text([columns(k, scored)]).encode())
            for chunk in _chunks(lines, seen):
                handle.write(csv_text(csv_row(row, k, scored) for row in chunk).encode())
            return
    _write_parquet(path, _chunks(lines, seen), scored)


def _chunks(lines: Iterable[bytes], seen: Callable[[dict], None]) -> Iterator[list[dict]]:
    chunk = []
    for line in lines:
        row = json.loads(line)
        seen(row)
        chunk.append(row)
        if len(chunk) == ROW_GROUP:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _write_parquet(path: Path, chunks: Iterable[list[dict]], scored: bool) -> None:
    """One row group per chunk, with the top-k as lists; the metadata marks the file as ours."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    fields = [("path", pa.string()), ("label", pa.string()), ("labels", pa.list_(pa.string())),
              ("confidences", pa.list_(pa.float64())), ("error", pa.string())]
    schema = pa.schema(fields + ([("true_label", pa.string())] if scored else []),
                       metadata={OURS_PARQUET: b"predictions"})
    with pq.ParquetWriter(path, schema) as writer:
        for chunk in chunks:
            writer.write_table(pa.Table.from_pylist(chunk, schema=schema))


def finish(out: Path, journals: list[Path], k: int, scored: bool, seen: Callable[[dict], None]) -> None:
    """Merge the journals into ``out`` (temporary name, then os.replace), then remove them."""
    form = out.suffix.lower()
    write_via_temp(out, lambda tmp: write_rows(tmp, form, merged_lines(journals), k, scored, seen),
                   opened=True)
    for path in journals:
        path.unlink(missing_ok=True)
    fsync_dir(out.parent)
