"""predict.py over many images (--out FILE, or --data): the run from start to end, in one process or
under torchrun. Loading, listing and predicting are in inference/batch.py, the output file and its
rules in inference/outfile.py, the score in inference/scoring.py."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from torch.utils.data import DataLoader

from vitclassifier.devices import loader_workers
from vitclassifier.errors import UserError
from vitclassifier.inference.batch import (
    TABLE_ROWS,
    Inputs,
    World,
    batch_rows,
    collate_in_order,
    data_inputs,
    image_inputs,
    join_world,
    progress,
    run_identity,
    share_of,
)
from vitclassifier.inference.loading import LoadedModel, load_for_prediction, prediction_device
from vitclassifier.inference.options import PredictConfig
from vitclassifier.inference.outfile import Journal, claim_out, finish, journal_path, remove_journals
from vitclassifier.inference.predict import print_table
from vitclassifier.inference.scoring import Score
from vitclassifier.reporting.plots import MAX_PICTURES, write_predictions
from vitclassifier.text import printable


class Tally:
    """What the terminal shows of the rows, in input order: the first few, counts, the score."""

    def __init__(self, score: Score | None):
        self.score, self.rows, self.errors = score, 0, 0
        self.shown: list[dict] = []  # the first readable rows, as print_table takes them
        self.failures: list[tuple[str, str]] = []  # the first unreadable ones

    def add(self, row: dict) -> None:
        self.rows += 1
        if row["error"]:
            self.errors += 1
            if len(self.failures) < TABLE_ROWS:
                self.failures.append((row["path"], row["error"]))
        elif len(self.shown) < max(TABLE_ROWS, MAX_PICTURES):
            self.shown.append({"path": row["path"], "label": row["label"], "predictions": [
                {"label": label, "confidence": c} for label, c in zip(row["labels"], row["confidences"])]})
        if self.score is not None:
            self.score.add(row)


def report(tally: Tally, inputs: Inputs, out: Path | None) -> None:
    """The capped table, where the rest went, the unreadable images, the score."""
    print_table(tally.shown[:TABLE_ROWS], file=sys.stdout)  # the stdout of now (a test captures it)
    rest = tally.rows - tally.errors - min(len(tally.shown), TABLE_ROWS)
    if rest > 0:
        where = f"every row is in {printable(out)}" if out else "give --out FILE to keep every row"
        print(f"... and {rest} more prediction(s) not shown: {where}")
    for path, reason in [*inputs.missing, *tally.failures]:
        print(f"error: {printable(path)}: {printable(reason)}", file=sys.stderr)
    if tally.errors > len(tally.failures):
        print(f"... and {tally.errors - len(tally.failures)} more unreadable image(s): see the error column "
              f"of {printable(out)}", file=sys.stderr)
    failed = tally.errors + len(inputs.missing)
    if failed:
        total = tally.rows + len(inputs.missing)
        print(f"{failed} of {total} input(s) could not be predicted", file=sys.stderr)
    if tally.score is not None:
        print(tally.score.line(printable(inputs.where)))


def refuse_unsupported(args: PredictConfig) -> None:
    """What --out / --data cannot do yet, said before the model is loaded and any image predicted."""
    if args.threshold is not None:
        raise UserError("--threshold works with --image (and --json) only: --out and --data write the top-k")
    if args.out is not None and args.out.suffix == ".parquet" and importlib.util.find_spec("pyarrow") is None:
        raise UserError(f"--out {printable(args.out)}: writing parquet needs pyarrow (pip install pyarrow), "
                        f"or write .jsonl or .csv")


def load(args: PredictConfig, device: str) -> tuple[LoadedModel, Inputs]:
    refuse_unsupported(args)
    loaded = load_for_prediction(args.model, prediction_device(args.model, device, args.runtime),
                                 args.precision, args.quantize, args.compile, args.runtime)
    if loaded.multi_label:
        raise UserError(f"--out and --data take models with one class per image for now; "
                        f"{printable(args.model)} gives several labels per image: predict with --image (and "
                        f"--json)")
    if args.data is not None:
        inputs = data_inputs(args.data, args.data_format, (args.image_column, args.label_column), args.model,
                             loaded, args.batch_size)
    else:
        inputs = image_inputs(args.image, loaded)
    return loaded, inputs


def open_journal(args: PredictConfig, world: World, run: str, header: dict) -> Journal:
    """Claim --out (every process checks; the main one clears an old run's journals) and open this
    process's journal, continued under --resume."""
    resume = claim_out(args.out, run, world.size, args.resume, args.overwrite)
    world.barrier()
    if not resume and world.rank == 0:
        remove_journals(args.out)
    world.barrier()
    return Journal(journal_path(args.out, world.rank, world.size), {"run": run, "world": world.size,
                                                                     "rank": world.rank, **header}, resume)


def predict_many(args: PredictConfig) -> int:
    """Predict, stream the rows into --out, merge, report. Returns the exit code (main process)."""
    world, device = join_world(args.device)
    if world.size > 1 and args.out is None:
        raise UserError("under torchrun, give --out FILE: the processes' rows are merged into it")
    loaded, inputs = load(args, device)
    k = min(args.top_k, len(loaded.labels))
    if args.top_k > k and world.rank == 0:
        print(f"note: --top-k {args.top_k} capped at the model's {k} classes", file=sys.stderr)
    options = {"k": k, "min_confidence": args.min_confidence, "tta": args.tta, "precision": args.precision,
               "quantize": args.quantize, "runtime": args.runtime}
    tally = Tally(Score(loaded.labels, k) if inputs.scored else None)
    journal = None
    if args.out is not None:
        journal = open_journal(args, world, run_identity(args.model, inputs, options),
                               {"k": k, "scored": inputs.scored})
    try:
        done = journal.done if journal else 0
        part = share_of(inputs.dataset, world, done)
        loader = DataLoader(part, batch_size=args.batch_size, collate_fn=collate_in_order,
                            num_workers=loader_workers(None, loaded.device),
                            pin_memory=loaded.device.type == "cuda")
        with progress(len(inputs.dataset), world, done * world.size) as bar:
            for rows in batch_rows(loaded, loader, k, args.tta, args.min_confidence, inputs.scored):
                if journal is not None:
                    journal.write(rows)
                else:
                    for row in rows:
                        tally.add(row)
                bar.update(len(rows) * world.size)
    finally:
        if journal is not None:
            journal.close()
    world.barrier()
    if world.rank != 0:
        return 0
    if args.out is not None:
        finish(args.out, [journal_path(args.out, r, world.size) for r in range(world.size)], k,
               inputs.scored, tally.add)
    report(tally, inputs, args.out)
    if args.visualize and tally.shown:
        write_predictions(tally.shown, args.visualize)
        print(f"Saved the picture to {args.visualize}", file=sys.stderr)
    if args.out is not None:
        print(f"Predictions of {tally.rows} image(s): {printable(args.out)}", file=sys.stderr)
    return 1 if tally.errors or inputs.missing or tally.rows == tally.errors else 0
