"""A training run as named steps: set up (data, model, loaders, optimizer, resume), then per epoch
train, validate, keep the best, save ``last/``; then finish (report, tracking, summary).

    Trainer(config, world, device, saved_state).run()

``TrainState`` is everything a run continues from; it is saved in ``last/training_state.pt``
together with the optimizer, scheduler, scaler and EMA states (see ``save_last``).
"""
from __future__ import annotations

import math
import sys
import time
from collections import Counter
from dataclasses import replace

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from vitclassifier.config import TrainConfig
from vitclassifier.devices import pick_device
from vitclassifier.errors import UserError
from vitclassifier.model.checkpoint import save_model
from vitclassifier.reporting.metrics import SELECT_BY, metrics_row, new_totals, write_metrics
from vitclassifier.reporting.tracking import check_tracking_server, make_tracker
from vitclassifier.text import counted, printable, shell_word
from vitclassifier.training.distributed import World, close_world, init_world, merge_dicts_across, sum_across
from vitclassifier.training.final_report import report_run
from vitclassifier.training.loop import check_classes_readable, evaluate, train_epoch
from vitclassifier.training.recipe import set_trainable
from vitclassifier.training.resume import StopSignal, prepare_resume, saved_options
from vitclassifier.training.setup import RESUMED_PARTS, TrainerSetUp


class Trainer(TrainerSetUp):
    """The epochs of a run: train, validate, keep the best, save last/; then the report."""

    # -- one epoch ------------------------------------------------------------------------------
    def enter_stage(self, epoch: int) -> None:
        """--freeze-epochs: the head alone first, then the rest; (re)wrap the model for that stage."""
        head_only = epoch <= self.head_epochs
        if getattr(self, "head_only", None) == head_only:
            return
        self.head_only = head_only
        set_trainable(self.model, head_only, self.trainable)
        net = self.as_net(self.model)
        wrapped = DistributedDataParallel(net) if self.world.distributed else net
        self.shared.model = torch.compile(wrapped) if self.config.runtime.compile else wrapped

    def train_one_epoch(self, stop: StopSignal) -> bool:
        """Train the rest of the current epoch; False when a stop signal cut it short."""
        state = self.state
        self.enter_stage(state.epoch)
        if state.step == 0:  # metrics.csv shows the LR an epoch starts with, also when it was resumed
            state.totals["lr"] = self.shared.scheduler.get_last_lr()[-1]
        self.sampler.set_epoch(state.epoch, start_batch=state.step)
        self.shared.drawn = Counter(self.sampler.already_drawn())  # a resumed epoch counts as before
        state.step = train_epoch(self.shared, self.train_loader, state.epoch, state.step, state.totals, stop)
        return state.step >= self.sampler.steps

    def summed(self, sums: dict) -> dict:
        """The epoch's running training sums over all processes."""
        loss, top1, count = sum_across([sums["loss"], sums["top1"], sums["count"]], self.world, self.device)
        return {"loss": loss, "top1": int(top1), "count": int(count), "lr": sums["lr"]}

    def validate(self) -> tuple[dict, dict | None]:
        """Validation scores of the raw weights and of the EMA (None without --ema)."""
        run, epoch, classes = self.shared, self.state.epoch, len(self.labels)
        val = evaluate(run, self.as_net(self.model), self.val_loader, classes, f"epoch {epoch} val")
        ema = (evaluate(run, self.as_net(run.ema.model), self.val_loader, classes, f"epoch {epoch} val (EMA)")
               if run.ema else None)
        run.bad_files = merge_dicts_across(run.bad_files, self.world)
        if isinstance(self.train_samples, list):  # streamed shards: no list of files to check against
            check_classes_readable(run.bad_files, self.train_samples, self.labels)
        return val, ema

    def keep_best(self, val: dict, ema: dict | None) -> bool:
        """Save best/ when the better of the raw and EMA weights beats the best so far."""
        select_by = self.config.recipe.select_by
        select, state = SELECT_BY[select_by], self.state
        use_ema = ema is not None and select(ema) > select(val)
        chosen = ema if use_ema else val
        scored = math.isfinite(chosen["loss"])  # a NaN validation loss is never "best"
        improved = scored and (state.best["score"] is None or list(select(chosen)) > state.best["score"])
        if improved:
            state.best = {"epoch": state.epoch, "score": list(select(chosen)), "select_by": select_by,
                          "weights": "ema" if use_ema else "raw", "val_acc": chosen["acc"],
                          "val_loss": chosen["loss"], "val_macro_f1": chosen["macro_f1"]}
            if self.world.is_main:
                weights = self.shared.ema.model if use_ema else self.model
                save_model(weights, self.prep, self.output_dir / "best", info={
                    **state.best, "labels": self.labels, "model": self.config.model.name, "data": self.source,
                    "train_images": self.train_images(), "val_images": chosen["count"]})
        state.stale_epochs = 0 if improved else state.stale_epochs + 1
        return improved

    def train_images(self) -> int:
        """The training images every epoch uses: the whole training split but the unreadable files (the
        count the summary and training_info.json give; under torchrun the few images an epoch wraps
        round to even out the processes' shares are not counted twice)."""
        unreadable = sum(1 for path in self.shared.bad_files if path in self.shared.sample_index)
        left_out = getattr(self.sampler, "left_out", 0)  # shards shared unevenly under torchrun
        return len(self.train_samples) - unreadable - left_out

    def save_last(self) -> None:
        """last/: the weights and everything a resumed run continues from (TrainState and more)."""
        if not self.world.is_main:
            return
        state, run = self.state, self.shared
        save_model(self.model, self.prep, self.output_dir / "last", training_state={
            "epoch": state.epoch, "step": state.step, "totals": state.totals, "labels": self.labels,
            "world_size": self.world.size,
            "data": self.fingerprint, "options": saved_options(self.config), "best": state.best,
            "stale_epochs": state.stale_epochs, "bad_files": run.bad_files, "rows": state.rows,
            "finished": state.finished,
            **{part: getattr(run, part).state_dict() for part in RESUMED_PARTS},
            **({"ema": run.ema.state_dict()} if run.ema else {})})

    # -- the run --------------------------------------------------------------------------------
    def end_epoch(self, started: float) -> bool:
        """Validate, record, keep the best, save last/; True when early stopping says enough."""
        state, recipe = self.state, self.config.recipe
        totals = self.summed(state.totals)
        self.check_finite(totals)
        val, ema = self.validate()
        self.check_finite(val)  # weights that turned NaN in the epoch's last step
        state.rows.append(metrics_row(state.epoch, totals, val, ema, time.time() - started))
        self.tracker.log_epoch(state.epoch, state.rows[-1])
        improved = self.keep_best(val, ema)
        row = state.rows[-1]
        ema_note = f" | EMA acc {ema['acc']:.3f}" if ema else ""
        self.say(f"epoch {state.epoch}/{recipe.epochs}: train loss {row['train_loss'][:6]} "
                 f"acc {row['train_acc'][:5]} | "
                 f"val loss {val['loss']:.4f} acc {val['acc']:.3f} top3 {val['top3']:.3f} "
                 f"macro-F1 {val['macro_f1']:.3f}{ema_note}"
                 f" | {time.time() - started:.0f}s{'  * best, saved' if improved else ''}")
        self.last_val = val
        early_stop = bool(recipe.patience) and state.stale_epochs >= recipe.patience
        state.epoch, state.step, state.totals = state.epoch + 1, 0, new_totals()
        state.finished = early_stop or state.epoch > recipe.epochs
        self.save_last()  # with the rows: a kill before metrics.csv is rewritten loses no row
        if self.world.is_main:
            write_metrics(self.output_dir / "metrics.csv", state.rows)
        if early_stop:
            self.say(f"Early stop: no better validation score for {counted(recipe.patience, 'epoch')}")
        return early_stop

    def check_finite(self, sums: dict) -> None:
        """A loss (training or validation, the same on every process) that is no longer a number
        means the weights are ruined: stop before saving them."""
        if math.isfinite(sums["loss"]):
            return
        lr = self.config.recipe.lr
        raise UserError(f"training diverged in epoch {self.state.epoch}: the loss became "
                        f"{sums['loss']}. Nothing of this epoch was saved: {self.output_dir} keeps the "
                        f"last good epoch. Lower --lr (now {lr:g}) or --head-lr, or raise --warmup")

    def stop_requested(self, stop: StopSignal) -> bool:
        """Whether any process got a stop signal: all processes decide together (torchrun)."""
        self.stopped = sum_across([float(stop.signum > 0)], self.world, self.device)[0] > 0
        return self.stopped

    def stopped_mid_epoch(self) -> None:
        """A stop signal inside an epoch: keep this step and the epoch's running sums."""
        state = self.state
        state.totals = self.summed(state.totals)
        self.check_finite(state.totals)  # never replace the last good state with diverged weights
        self.save_last()
        self.say(f"Stopped in epoch {state.epoch} after step {state.step} of {self.sampler.steps}; saved "
                 f"{printable(self.output_dir / 'last')}. Continue with: python train.py --resume "
                 f"{shell_word(self.output_dir)}",
                 file=sys.stderr)

    def train_epochs(self, stop: StopSignal) -> bool:
        """The epoch loop; False when a stop signal cut an epoch short."""
        state, epochs = self.state, self.config.recipe.epochs
        while state.epoch <= epochs:
            started = time.time()
            if not self.train_one_epoch(stop):
                self.stopped_mid_epoch()
                return False
            if self.end_epoch(started) or self.stop_requested(stop):
                break
        return True

    def finish(self, stop: StopSignal) -> None:
        """After the last epoch: the report on best/ (calibration, pictures), tracked files."""
        state = self.state
        if (stop.signum or self.stopped) and state.epoch <= self.config.recipe.epochs:
            self.say(f"Stopped after epoch {state.epoch - 1}; saved {printable(self.output_dir / 'last')}. "
                     f"Continue with: python train.py --resume {shell_word(self.output_dir)}",
                     file=sys.stderr)
        elif self.world.is_main and state.best["epoch"]:
            single = replace(self.shared, world=World())  # the report evaluates best/ in this process alone
            full_val = DataLoader(self.val_set, **self.loader_options)
            state.best.update(report_run(single, self.output_dir, self.labels, full_val, state.rows,
                                         self.config.recipe.calibrate))
            pictures, tables = sorted(self.output_dir.glob("*.png")), sorted(self.output_dir.glob("*.csv"))
            self.tracker.log_files(pictures + tables)
            self.tracker.log_model(self.output_dir / "best")

    def run(self) -> dict:
        """The whole run. Returns a summary: the best epoch's scores, time, skipped files, stop signal."""
        started = time.time()
        self.set_up()
        self.last_val = {"count": 0}
        runtime = self.config.runtime
        self.tracker = make_tracker(runtime.track if self.world.is_main else None, runtime.tracking_uri,
                                    self.output_dir)
        with StopSignal(announce=self.world.is_main) as stop, self.tracker:
            self.tracker.log_params(saved_options(self.config))
            if not self.train_epochs(stop):
                return {**self.state.best, "stopped_by": stop.signum, "bad_files": self.shared.bad_files}
            self.finish(stop)
        self.list_bad_files()
        minutes = (time.time() - started) / 60
        self.say_done(minutes)
        return {**self.state.best, "minutes": minutes, "bad_files": self.shared.bad_files,
                "stopped_by": stop.signum, "train_count": self.train_images(),
                "val_count": self.last_val["count"]}

    def list_bad_files(self) -> None:
        bad_files = self.shared.bad_files
        if bad_files:
            self.say(f"{len(bad_files)} unreadable image(s) were skipped:", file=sys.stderr)
            for path, reason in sorted(bad_files.items()):
                self.say(f"  {path}: {reason}", file=sys.stderr)

    def say_done(self, minutes: float) -> None:
        best, best_dir = self.state.best, self.output_dir / "best"
        if best["epoch"]:
            self.say(f"Done in {minutes:.1f} min. Best epoch {best['epoch']} ({best['weights']} weights): "
                     f"val acc {best['val_acc']:.3f}, macro-F1 {best['val_macro_f1']:.3f}, "
                     f"loss {best['val_loss']:.4f}. "
                     f"Model: {printable(best_dir)}  (try: python predict.py --model {shell_word(best_dir)} "
                     f"--image IMAGE)")


def train(config: TrainConfig, given: set[str] = frozenset()) -> dict:
    """Train as ``config`` says (``given``: the options typed on the command line, which a resumed
    run must not contradict). Returns the summary of Trainer.run."""
    config, saved = prepare_resume(config, given)  # first: a resumed run takes its options from the save
    if saved is not None and (saved.get("finished") or saved["epoch"] > config.recipe.epochs):
        run_dir = saved["dir"].parent
        best = run_dir / "best"
        print(f"{printable(run_dir)} already finished (best epoch {saved['best'].get('epoch')}); nothing was "
              f"changed. To train longer, start a new run from its model: --model {shell_word(best)}")
        return {**saved["best"], "stopped_by": 0, "bad_files": {}, "already_finished": True}
    if config.runtime.track == "mlflow":  # an unreachable server is said now, not after the set-up
        check_tracking_server(config.runtime.tracking_uri)
    world, device_choice = init_world(config.runtime.device)
    trainer = Trainer(config, world, pick_device(device_choice), saved)
    try:
        return trainer.run()
    finally:
        if trainer.lock is not None:
            trainer.lock.release()
        close_world(world)
