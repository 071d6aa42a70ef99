"""Where a training run is, and the one place that knows how ``last/training_state.pt`` holds it.

``RunState`` is everything a run continues from besides the weights and the optimizer, scheduler,
scaler and EMA states: the next (epoch, step), that epoch's running sums, the best model so far,
the rows of metrics.csv and the unreadable files met. ``to_checkpoint`` writes it (with those
states), ``check`` reads a loaded file as untrusted input, ``from_checkpoint`` continues from it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from vitclassifier.model.trust import check_labels, is_number, refusal
from vitclassifier.reporting.metrics import new_totals, read_metrics

# What a training state holds, with its type; OPTIONAL_FIELDS may be absent (older saves, no --ema)
STATE_FIELDS = {"epoch": int, "step": int, "stale_epochs": int, "labels": list, "data": str, "options": dict,
                "best": dict, "totals": dict, "bad_files": dict, "optimizer": dict, "scheduler": dict,
                "scaler": dict}
OPTIONAL_FIELDS = {"ema": dict, "rows": list, "finished": bool, "world_size": int, "plan": dict}
RESUMED_PARTS = ("optimizer", "scheduler", "scaler")  # saved as state_dicts, with "ema" under --ema


@dataclass
class RunState:
    """Where a run is: the next (epoch, step), that epoch's running sums, the best model so far; and
    what it runs on (labels, the data's fingerprint, the options, the number of processes)."""
    labels: list[str]
    data: str  # the training data's fingerprint: a resume refuses changed data
    options: dict  # saved_options: a resume takes its options from here
    world_size: int = 1
    epoch: int = 1
    step: int = 0
    totals: dict = field(default_factory=new_totals)
    best: dict = field(default_factory=lambda: {"epoch": 0, "score": None})
    stale_epochs: int = 0
    rows: list[dict] = field(default_factory=list)  # metrics.csv so far (saved with the state too)
    finished: bool = False  # all epochs done, or stopped early: a resume has nothing left to do
    bad_files: dict = field(default_factory=dict)  # unreadable image -> why
    plan: dict = field(default_factory=dict)  # the recipe's record for training_info.json (training/auto.py)

    def to_checkpoint(self, parts: dict) -> dict:
        """The dict saved as training_state.pt; ``parts``: the state_dicts of RESUMED_PARTS (and ema)."""
        return {"epoch": self.epoch, "step": self.step, "totals": self.totals, "labels": self.labels,
                "world_size": self.world_size, "data": self.data, "options": self.options, "best": self.best,
                "stale_epochs": self.stale_epochs, "bad_files": self.bad_files, "rows": self.rows,
                "finished": self.finished, "plan": self.plan, **parts}

    @classmethod
    def from_checkpoint(cls, saved: dict, options: dict, world_size: int, is_main: bool,
                        metrics_csv: Path) -> RunState:
        """Continue a checked save (its labels, data and number of processes already matched) with this
        session's ``options`` in ``world_size`` processes. Only the main process keeps the saved running
        sums (they cover all processes; the others start the epoch at zero). Older saves without rows
        take them from metrics.csv."""
        rows = saved.get("rows")
        if isinstance(rows, list):
            rows = [row for row in rows if isinstance(row, dict) and str(row.get("epoch", "")).isdigit()
                    and int(row["epoch"]) < saved["epoch"]]
        else:
            rows = read_metrics(metrics_csv, saved["epoch"] - 1)
        return cls(labels=saved["labels"], data=saved["data"], options=options, world_size=world_size,
                   epoch=saved["epoch"], step=saved["step"],
                   totals=saved["totals"] if is_main else new_totals(), best=saved["best"],
                   stale_epochs=saved["stale_epochs"], rows=rows,
                   bad_files=saved["bad_files"], plan=saved.get("plan", {}))

    @staticmethod
    def check(state: dict, where: str) -> None:
        """A loaded training state checked like user input: every field there, of its type, in range."""
        missing = sorted(set(STATE_FIELDS) - set(state))
        if missing:
            raise refusal(where, f"it has no {', '.join(missing)} (damaged, or not a training state)")
        for name, kind in {**STATE_FIELDS, **OPTIONAL_FIELDS}.items():
            value = state.get(name, kind())
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                raise refusal(where, f"its {name} is a {type(value).__name__}, not a {kind.__name__}")
        if state["epoch"] < 1 or state["step"] < 0 or state["stale_epochs"] < 0:
            raise refusal(where, "its position (epoch, step) or its count of stale epochs is out of range")
        check_labels(state["labels"], where)
        for ok, reason in content_checks(state):
            if not ok:
                raise refusal(where, reason)


def content_checks(state: dict) -> list[tuple[bool, str]]:
    """(passes, why not) for what the types alone don't say: text, numbers, the best epoch's scores."""
    best, totals = state["best"], state["totals"]
    return [
        (all(isinstance(k, str) and isinstance(v, str) for k, v in state["bad_files"].items()),
         "its list of unreadable files is not text"),
        (all(is_number(totals.get(k)) for k in ("loss", "top1", "count")),
         "its running sums are not numbers"),
        (isinstance(best.get("epoch"), int) and is_number(best["epoch"]) and best["epoch"] >= 0,
         "its best epoch is not a whole number"),
        (best.get("score") is None
         or (isinstance(best["score"], list) and all(map(is_number, best["score"]))),
         "its best score is not a list of numbers"),
        (best.get("score") is None or (best.get("weights") in ("raw", "ema", "probe") and all(
            is_number(best.get(k)) for k in ("val_acc", "val_loss", "val_macro_f1"))),
         "its best epoch's scores are not numbers"),
        (all(isinstance(k, str) for k in state["options"]), "its options are not named by text"),
    ]
