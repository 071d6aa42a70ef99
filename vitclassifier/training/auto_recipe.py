"""``--recipe auto``: the fine-tuning settings decided from the data, the model and short measurements.

A pure function from facts to decisions: no I/O, no training. Each decision names the option it
sets, its value and why, in one line; an option the user typed is never overridden (the decision
says it kept it). The rules, and where they come from:

- **lr**: the LR range test's suggestion (lr_finder.py). The fixed recipe's 5e-5 suits a ViT-B
  pre-trained on ImageNet-21k and fine-tuned on a large set; on 50 images per class of a far
  domain, 2e-4 tuned by hand gave 68% against 36% (issue 29). The suggestion is kept within
  LR_RANGE of the fixed LR: a range test on a few dozen small-set steps is noisy. A curve whose loss
  fell less than MIN_DIP (random weights on a small set: docs/measurements.md, 2026-12-08) has no
  LR that stands out, and keeps the fixed LR.
- **head_lr**: when the head starts from the linear probe (LP-FT, Kumar et al. 2022), the same LR as
  the backbone: a fitted head needs no 10x catch-up, and its smaller gradients distort the
  features less. Otherwise 10x for a pre-trained backbone (docs/recipe.md: +2.8 points on digits).
- **epochs**: enough optimizer steps. BiT's HyperRule (Kolesnikov et al. 2020) gives sets under
  20k images 500 steps whatever their size, so fewer images get more epochs; never fewer epochs
  than the fixed recipe, and never more time than TIME_CAP x the fixed recipe's (the measurements'
  time counted in). From random weights the cap is SCRATCH_TIME_CAP, and the line says so: a small
  set then needs many more steps (digits, 50 a class: 34% after the fixed 10 epochs, 53% after 27;
  docs/measurements.md). Early stopping (patience) guards the end.
- **patience**: a fifth of the epochs, at least the fixed recipe's: a small validation set's
  accuracy is noisy from epoch to epoch, and a longer run has longer plateaus.
- **freeze_epochs**: 0 with a probe: the probe is the head-only stage, done in seconds.
- **no_flip**: the label check's verdict (label_checks.py).
- **warmup**, **label_smoothing**: the fixed recipe's (docs/recipe.md: smoothing 0.1 +1.1 points).
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass

TARGET_STEPS = 500  # BiT-HyperRule's schedule for data sets under 20k images
TIME_CAP = 1.5  # the automatic recipe takes at most this multiple of the fixed recipe's time
SCRATCH_TIME_CAP = 3.0  # ... from random weights, where a small set needs many more steps
LR_RANGE = 20.0  # the range test's suggestion is kept within fixed LR / LR_RANGE .. fixed LR x LR_RANGE
MIN_DIP = 0.1  # a range test whose loss fell less than this found no LR that stands out: its pick is noise
PATIENCE_SHARE = 0.2


@dataclass(frozen=True)
class Facts:
    """What the decisions are made from: the data, the model, and the measurements (None: not measured)."""
    train_images: int
    images_per_class_min: int
    images_per_class_median: float
    num_classes: int
    image_size_median: int
    pretrained: bool
    model_name: str
    batch_size: int  # images per optimizer step (batch size x gradient accumulation)
    lr_suggestion: float | None = None
    lr_dip: float | None = None  # how far the range test's smoothed loss fell below its start (0.3: 30%)
    probe_accuracy: float | None = None
    flip_switch_off: bool | None = None
    flip_reason: str = ""
    measurement_epochs: float = 0.0  # the range test, probe and checks, in epochs of training time


@dataclass(frozen=True)
class Decision:
    option: str  # the option's dest, as in TrainConfig.as_options
    value: object
    reason: str

    def line(self) -> str:
        """One printed line: the option as typed, its value, why."""
        flag = "--" + self.option.replace("_", "-")
        if isinstance(self.value, bool):
            shown = flag if self.value else f"{flag} off"
        else:
            shown = f"{flag} {self.value:g}" if isinstance(self.value, float) else f"{flag} {self.value}"
        return f"{shown}: {self.reason}"


def steps_per_epoch(facts: Facts) -> int:
    return max(1, math.ceil(facts.train_images / facts.batch_size))


def choose_lr(facts: Facts, chosen: dict) -> tuple[float, str]:
    fixed = chosen["lr"]
    if facts.lr_suggestion is None:
        return fixed, "no LR range test was run: the fixed recipe's"
    if facts.lr_dip is not None and facts.lr_dip < MIN_DIP:  # e.g. random weights on a small set
        return fixed, (f"the LR range test's loss fell only {facts.lr_dip:.0%} (a flat curve: no LR stands "
                       f"out), so the fixed recipe's")
    low, high = fixed / LR_RANGE, fixed * LR_RANGE
    value = min(max(facts.lr_suggestion, low), high)
    reason = f"the LR range test suggests {facts.lr_suggestion:.2g} (a tenth of the LR at its lowest loss)"
    if value != facts.lr_suggestion:
        reason += f", kept within {LR_RANGE:g}x of the fixed recipe's {fixed:g}"
    return value, reason


def choose_head_lr(facts: Facts, chosen: dict) -> tuple[float, str]:
    lr = chosen["lr"]
    if facts.probe_accuracy is not None:
        return lr, (f"the head starts from the linear probe ({facts.probe_accuracy:.0%} on validation): the "
                    f"backbone's LR, so its gradients distort the features less (LP-FT, Kumar et al. 2022)")
    if facts.pretrained:
        return 10 * lr, "10x the backbone's LR for a new head on a pre-trained backbone (docs/recipe.md)"
    return lr, "the backbone's LR: from random weights no part is ahead of the others"


def choose_epochs(facts: Facts, chosen: dict) -> tuple[int, str]:
    fixed, steps = int(chosen["epochs"]), steps_per_epoch(facts)
    wanted = math.ceil(TARGET_STEPS / steps)
    time_cap = TIME_CAP if facts.pretrained else SCRATCH_TIME_CAP
    cap = max(1, math.floor(time_cap * fixed - facts.measurement_epochs))
    epochs = min(max(wanted, fixed), cap)
    reason = (f"{TARGET_STEPS} optimizer steps for {facts.train_images} images "
              f"({facts.images_per_class_min} in the smallest class; BiT-HyperRule) are {wanted} epochs "
              f"of {steps} steps")
    if epochs == cap and wanted > cap:
        reason += (f"; capped so the run, measurements included, takes at most {time_cap:g}x the fixed "
                   f"recipe's {fixed} epochs")
        if not facts.pretrained:
            reason += " (from random weights a small set needs many more steps: docs/recipe.md)"
    elif epochs == fixed and wanted < fixed:
        reason += f"; never fewer than the fixed recipe's {fixed}"
    multiple = (epochs + facts.measurement_epochs) / fixed
    return epochs, reason + f"; about {multiple:.1f}x the fixed recipe's time, measurements included"


def choose_patience(facts: Facts, chosen: dict) -> tuple[int, str]:
    fixed, epochs = int(chosen["patience"]), int(chosen["epochs"])
    value = max(fixed, math.ceil(PATIENCE_SHARE * epochs))
    return value, (f"stop after {value} epochs without improvement: at least a fifth of the {epochs} epochs, "
                   f"as a small validation set's accuracy is noisy")


def choose_freeze_epochs(facts: Facts, chosen: dict) -> tuple[int, str]:
    if facts.probe_accuracy is not None:
        return 0, "the linear probe already trained the head alone, in seconds"
    return chosen["freeze_epochs"], "the fixed recipe's"


def choose_no_flip(facts: Facts, chosen: dict) -> tuple[bool, str]:
    if facts.flip_switch_off is None:
        return chosen["no_flip"], "the flip was not checked: the fixed recipe's"
    return facts.flip_switch_off, facts.flip_reason


def choose_warmup(facts: Facts, chosen: dict) -> tuple[float, str]:
    total = int(chosen["epochs"]) * steps_per_epoch(facts)
    warmup = chosen["warmup"]
    return warmup, f"the fixed recipe's share: {math.ceil(warmup * total)} of {total} steps warm up"


def choose_label_smoothing(facts: Facts, chosen: dict) -> tuple[float, str]:
    return chosen["label_smoothing"], "the fixed recipe's: it paid on small sets (docs/recipe.md)"


RULES = {  # in order: later rules read earlier decisions (head_lr reads lr, patience reads epochs)
    "lr": choose_lr, "head_lr": choose_head_lr, "epochs": choose_epochs, "patience": choose_patience,
    "freeze_epochs": choose_freeze_epochs, "warmup": choose_warmup, "no_flip": choose_no_flip,
    "label_smoothing": choose_label_smoothing,
}


def decide(facts: Facts, options: Mapping[str, object], typed: set[str]) -> list[Decision]:
    """The automatic recipe. ``options``: the run's options by dest (TrainConfig.as_options, defaults
    resolved); ``typed``: the dests the user typed (cli.typed_options), which are kept as typed."""
    chosen, decisions = dict(options), []
    for option, rule in RULES.items():
        if option in typed:
            decision = Decision(option, options[option], "kept as you typed it")
        else:
            decision = Decision(option, *rule(facts, chosen))
        chosen[option] = decision.value
        decisions.append(decision)
    return decisions


def as_json(facts: Facts, decisions: list[Decision]) -> dict:
    """Plain data for training_info.json: what was measured, and what was decided from it."""
    return {"facts": asdict(facts), "decisions": [asdict(decision) for decision in decisions]}


def from_json(saved: dict) -> tuple[Facts, list[Decision]]:
    return Facts(**saved["facts"]), [Decision(**row) for row in saved["decisions"]]
