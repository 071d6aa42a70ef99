"""LP-FT's second half (Kumar et al. 2022): fine-tuning starts from the linear probe's head, and the
probe model itself (the backbone as loaded with that head) is a candidate like any epoch.

On a few dozen images per class, or a backbone whose features already fit, fine-tuning can end below
the probe it started from. So before the first step the Trainer validates the probe model as
"epoch 0" with its own validate and keep_best steps: best/ holds the probe model (weights "probe")
until an epoch beats it, and stays the probe model when none does. Only a fresh ``--recipe auto`` run
with pre-trained weights has a probe (training/auto.py); a resumed run finds epoch 0 in its best/.
"""
from __future__ import annotations

from collections.abc import Callable


def score_probe(validate: Callable[[], tuple[dict, dict | None]], keep_best: Callable[[dict, None], bool],
                state: object, say: Callable) -> None:
    """Epoch 0: the probe model validated and kept as best/ (Trainer.validate, Trainer.keep_best on the
    RunState ``state``, whose epoch is 0 meanwhile); its accuracy recorded in ``state.plan``
    ("probe_val_acc": the Trainer's own figure for the weights the measurement fitted)."""
    state.epoch = 0
    try:
        val, _ = validate()  # the EMA is still the same weights
        state.plan["probe_val_acc"] = val["acc"]  # before keep_best writes it into best/training_info.json
        improved = keep_best(val, None)
    finally:
        state.epoch = 1
    state.stale_epochs = 0  # patience counts fine-tuning epochs only
    kept = "  * best, saved" if improved else ""
    say(f"epoch 0 (the linear probe's head, before fine-tuning): val loss {val['loss']:.4f} "
        f"acc {val['acc']:.3f} top3 {val['top3']:.3f} macro-F1 {val['macro_f1']:.3f}{kept}")

def probe_note(best: dict, plan: dict, rows: list[dict]) -> str:
    """For the summary line: the probe's accuracy beside the fine-tuned one, and which model was kept
    ("" without a probe scored as epoch 0)."""
    if "probe_val_acc" not in plan or best.get("epoch") is None:
        return ""
    probe = plan["probe_val_acc"]
    if best["epoch"] > 0:
        return f" Linear probe alone: val acc {probe:.3f}; fine-tuned: {best['val_acc']:.3f}, kept."
    tuned = [(float(row[key]), int(row["epoch"])) for row in rows
             for key in ("val_acc", "ema_val_acc") if row.get(key)]
    if not tuned:
        return f" Linear probe alone: val acc {probe:.3f}, kept (no fine-tuning epoch was validated)."
    acc, epoch = max(tuned, key=lambda pair: (pair[0], -pair[1]))
    return (f" Linear probe alone: val acc {probe:.3f}, kept; fine-tuned: {acc:.3f} at best (epoch {epoch}), "
            f"never better on validation.")
