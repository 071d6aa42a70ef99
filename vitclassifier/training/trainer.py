"""A training run, top to bottom:

    train(config)                       the options (a resumed run's), the processes, the device
      Trainer(...)                      set-up (setup.build_components) and where the run is (RunState)
      Trainer.train()                   (LP-FT: the probe model as epoch 0, lpft.py) the epochs; each:
        train_epoch                       the batches: forward/backward, every --grad-accum an optimizer step
        validate                          scores of the weights (and of the EMA)
        record                            the metrics.csv row, the tracker
        keep_best                         best/ when the score beat the best so far
        next_epoch, save_last             the position moved on; last/ with everything a resume needs
        early stop or a stop signal       then the report on best/ (finish)

A stop signal inside an epoch saves last/ at the next step boundary (stopped_mid_epoch).
"""
from __future__ import annotations

import math
import sys
import time
from collections import Counter
from itertools import islice

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from vitclassifier.config import TrainConfig
from vitclassifier.devices import pick_device
from vitclassifier.errors import UserError
from vitclassifier.model.checkpoint import save_model
from vitclassifier.reporting.intervals import small_set_note
from vitclassifier.reporting.metrics import SELECT_BY, metrics_row, new_totals, write_metrics
from vitclassifier.reporting.tracking import check_tracking_server, make_tracker
from vitclassifier.text import counted, printable, shell_word
from vitclassifier.training.auto import Plan, plan_run
from vitclassifier.training.distributed import (
    World,
    augmentation_seeds,
    close_world,
    init_world,
    merge_dicts_across,
    step_seed,
    sum_across,
)
from vitclassifier.training.evaluate import EvalContext, sum_dtype
from vitclassifier.training.evaluate import evaluate as evaluate_one_label
from vitclassifier.training.final_report import report_run
from vitclassifier.training.lpft import probe_note, score_probe
from vitclassifier.training.multilabel import (
    check_classes_readable,
    evaluate_multi_label,
    exact_hits,
    multi_label_loss,
    select_by_of,
)
from vitclassifier.training.recipe import set_trainable
from vitclassifier.training.resume import StopSignal, prepare_resume, saved_options
from vitclassifier.training.setup import announcement, build_components, main_print
from vitclassifier.training.state import RESUMED_PARTS, RunState


class Trainer:
    """The epochs of a run: train, validate, keep the best, save last/; then the report."""

    def __init__(self, config: TrainConfig, world: World, device: torch.device, saved: dict | None = None,
                 plan: Plan | None = None):
        self.started = time.time()
        self.config, self.world, self.device = config, world, device
        self.output_dir = config.runtime.output_dir
        self.say = main_print(world)
        self.parts = build_components(config, world, device, saved, plan.head if plan else None)
        parts, options = self.parts, saved_options(config)
        self.multi_label = parts.source.multi_label  # several labels per image: training/multilabel.py
        self.net = parts.model  # what the batches go through: wrapped for the stage (begin_epoch)
        self.head_only: bool | None = None  # the stage: the head alone (--freeze-epochs) or all trainable
        self.drawn: Counter = Counter()  # this epoch's draws of each training image so far
        self.last_val = {"count": 0}
        self.stopped = False  # a stop signal reached some process (decided together: stop_requested)
        self.probe_first = saved is None and plan and plan.head is not None  # LP-FT: epoch 0 (lpft.py)
        try:  # the output folder is locked since build_components: released if the rest fails
            self.state = (RunState.from_checkpoint(saved, options, world.size, world.is_main,
                                                   self.output_dir / "metrics.csv") if saved is not None
                          else RunState(parts.source.labels, parts.source.fingerprint(), options, world.size,
                                        plan=plan.info if plan else {}))
            self.ctx = EvalContext(device, parts.dtype, world, self.state.bad_files)  # training's too
            if saved is not None:
                self.say(f"Resuming {saved['dir']} at epoch {saved['epoch']}, step {saved['step']} "
                         f"of {parts.sampler.steps}")
            self.say(announcement(config, world, device, parts))
            self.tracker = make_tracker(config.runtime.track if world.is_main else None,
                                        config.runtime.tracking_uri, self.output_dir)
        except BaseException:
            self.release()
            raise

    def train(self) -> dict:
        """The whole run. Returns a summary: the best epoch's scores, time, skipped files, stop signal."""
        state, epochs = self.state, self.config.recipe.epochs
        with StopSignal(announce=self.world.is_main) as stop, self.tracker:
            self.tracker.log_params(state.options)
            if self.probe_first:
                score_probe(self.validate, self.keep_best, state, self.say)
            while state.epoch <= epochs:
                started = time.time()
                if not self.train_epoch(stop):
                    self.stopped_mid_epoch()
                    return {**state.best, "stopped_by": stop.signum, "bad_files": state.bad_files}
                totals = self.summed(state.totals)
                self.check_finite(totals)
                val, ema = self.validate()
                self.check_finite(val)  # weights that turned NaN in the epoch's last step
                self.record(totals, val, ema, started)
                improved = self.keep_best(val, ema)
                self.say_epoch(val, ema, improved, started)
                early_stop = self.next_epoch()
                self.save_last()  # with the rows: a kill before metrics.csv is rewritten loses no row
                if self.world.is_main:
                    write_metrics(self.output_dir / "metrics.csv", state.rows)
                if early_stop:
                    patience = self.config.recipe.patience
                    self.say(f"Early stop: no better validation score for {counted(patience, 'epoch')}")
                    break
                if self.stop_requested(stop):
                    break
            self.finish(stop)
        return self.summary(stop)

    # -- one epoch, in the order its steps happen --------------------------------------------------
    def train_epoch(self, stop: StopSignal) -> bool:
        """Train the rest of the current epoch: each optimizer step sums the gradients of --grad-accum
        micro-batches (summed losses, divided by the step's images). False when a stop signal cut it short."""
        state, parts, recipe, world = self.state, self.parts, self.config.recipe, self.world
        self.begin_epoch()
        # Loss and top-1 sums stay on the device: reading them every step would make the CPU wait
        # for the GPU instead of queueing the next step while it computes.
        running = torch.zeros(2, dtype=sum_dtype(self.device), device=self.device)
        count = state.totals["count"]
        bar = self.ctx.bar(parts.train_loader, f"epoch {state.epoch}/{recipe.epochs} train")
        batches = iter(bar)
        while True:
            micro = step_images = 0
            for images, labels, paths, bad in islice(batches, recipe.grad_accum):
                self.ctx.note_bad(bad)
                flags = [float(stop.signum > 0), float(images is None)]
                stop_now, some_empty = sum_across(flags, world, self.device)
                if stop_now and micro == 0:  # stop between optimizer steps, never inside one
                    break
                micro += 1
                if not some_empty:  # a batch of only unreadable files: every process skips it together
                    torch.manual_seed(step_seed(recipe, state.epoch, state.step, micro, world.rank))
                    loss, hits = self.forward_backward(images, labels, paths)
                    running += torch.stack([loss.to(running.dtype) * len(labels), hits.to(running.dtype)])
                    step_images, count = step_images + len(labels), count + len(labels)
                    if not bar.disable and state.step % 10 == 0:  # shown on a terminal only
                        self.show_progress(bar, running, count)
            if micro == 0:  # the loader ran out, or a stop; a last step with fewer micro-batches was taken
                break
            if step_images:  # the optimizer step (none if every image of the step was unreadable)
                for parameter in self.net.parameters():  # the mean over the step's images, exactly
                    if parameter.grad is not None:
                        parameter.grad.div_(step_images)
                if recipe.grad_clip > 0:
                    parts.scaler.unscale_(parts.optimizer)
                    torch.nn.utils.clip_grad_norm_(self.net.parameters(), recipe.grad_clip)
                parts.scaler.step(parts.optimizer)
                parts.scaler.update()
                parts.optimizer.zero_grad(set_to_none=True)
                if parts.ema is not None:
                    parts.ema.update(parts.model)
            parts.scheduler.step()
            state.step += 1
        loss_sum, top1 = running.tolist()
        state.totals.update(loss=state.totals["loss"] + loss_sum, top1=state.totals["top1"] + round(top1),
                            count=count)
        return state.step >= parts.sampler.steps

    def begin_epoch(self) -> None:
        """The epoch's stage (--freeze-epochs: the head alone first, then the rest; the model (re)wrapped
        for it), its LR noted, its order of images from the current step on."""
        state, parts = self.state, self.parts
        head_only = state.epoch <= parts.head_epochs
        if self.head_only != head_only:
            self.head_only = head_only
            set_trainable(parts.model, head_only, parts.trainable)
            net = parts.as_net(parts.model)
            wrapped = DistributedDataParallel(net) if self.world.distributed else net
            self.net = torch.compile(wrapped) if self.config.runtime.compile else wrapped
        if state.step == 0:  # metrics.csv shows the LR an epoch starts with, also when it was resumed
            state.totals["lr"] = parts.scheduler.get_last_lr()[-1]
        parts.sampler.set_epoch(state.epoch, start_batch=state.step)
        self.drawn = Counter(parts.sampler.already_drawn())  # a resumed epoch counts as before
        self.net.train()

    def show_progress(self, bar, running: torch.Tensor, count: int) -> None:
        """The epoch's mean loss and accuracy so far on the progress bar (reads the device's sums)."""
        loss_sum, top1 = (self.state.totals[k] + v for k, v in zip(("loss", "top1"), running.tolist()))
        bar.set_postfix(loss=f"{loss_sum / count:.3f}", acc=f"{top1 / count:.3f}")

    def forward_backward(self, images: torch.Tensor, labels: torch.Tensor,
                         paths: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Gradients of one micro-batch's summed loss (augmented on the device, mixed); returns its mean
        loss and top-1 hits against the true, unmixed labels (device tensors)."""
        parts, recipe = self.parts, self.config.recipe
        images, labels = images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)
        seeds = augmentation_seeds(recipe, self.state.epoch, paths, parts.sample_index, self.drawn)
        if parts.augment is not None:  # batched augmentation on the device (uint8 in, normalised float out)
            images = parts.augment(images, seeds)
        inputs, targets = parts.mix(images, labels) if parts.mix else (images, labels)
        with self.ctx.autocast():
            logits = self.net(pixel_values=inputs).logits.float()
            loss = (multi_label_loss(logits, targets, recipe.loss, recipe.label_smoothing) if self.multi_label
                    else F.cross_entropy(logits, targets, weight=parts.loss_weight,
                                         label_smoothing=recipe.label_smoothing))
        parts.scaler.scale(loss * len(labels)).backward()
        hits = exact_hits(logits, labels) if self.multi_label else (logits.argmax(1) == labels).sum()
        return loss.detach(), hits

    def summed(self, sums: dict) -> dict:
        """The epoch's running training sums over all processes."""
        loss, top1, count = sum_across([sums["loss"], sums["top1"], sums["count"]], self.world, self.device)
        return {"loss": loss, "top1": int(top1), "count": int(count), "lr": sums["lr"]}

    def check_finite(self, sums: dict) -> None:
        """A loss (training or validation, the same on every process) that is no longer a number
        means the weights are ruined: stop before saving them."""
        if math.isfinite(sums["loss"]):
            return
        lr = self.config.recipe.lr
        raise UserError(f"training diverged in epoch {self.state.epoch}: the loss became "
                        f"{sums['loss']}. Nothing of this epoch was saved: {self.output_dir} keeps the "
                        f"last good epoch. Lower --lr (now {lr:g}) or --head-lr, or raise --warmup")

    def validate(self) -> tuple[dict, dict | None]:
        """Validation scores of the raw weights and of the EMA (None without --ema)."""
        parts, epoch, classes = self.parts, self.state.epoch, len(self.state.labels)
        evaluate = evaluate_multi_label if self.multi_label else evaluate_one_label
        val = evaluate(self.ctx, parts.as_net(parts.model), parts.val_loader, classes, f"epoch {epoch} val")
        ema = (evaluate(self.ctx, parts.as_net(parts.ema.model), parts.val_loader, classes,
                        f"epoch {epoch} val (EMA)") if parts.ema else None)
        self.state.bad_files = self.ctx.bad_files = merge_dicts_across(self.ctx.bad_files, self.world)
        if not parts.source.streamed:  # streamed shards: no list of files to check against
            check_classes_readable(self.ctx.bad_files, parts.source.train(), self.state.labels)
        self.last_val = val
        return val, ema

    def record(self, totals: dict, val: dict, ema: dict | None, started: float) -> None:
        """The epoch's row of metrics.csv, also sent to the tracker."""
        self.state.rows.append(metrics_row(self.state.epoch, totals, val, ema, time.time() - started))
        self.tracker.log_epoch(self.state.epoch, self.state.rows[-1])

    def keep_best(self, val: dict, ema: dict | None) -> bool:
        """Save best/ when the better of the raw and EMA weights beats the best so far."""
        select_by, parts = select_by_of(self.config, self.multi_label), self.parts
        select, state = SELECT_BY[select_by], self.state
        use_ema = ema is not None and select(ema) > select(val)
        chosen = ema if use_ema else val
        scored = math.isfinite(chosen["loss"])  # a NaN validation loss is never "best"
        improved = scored and (state.best["score"] is None or list(select(chosen)) > state.best["score"])
        if improved:
            kind = "probe" if state.epoch == 0 else "ema" if use_ema else "raw"  # epoch 0: lpft.py
            state.best = {"epoch": state.epoch, "score": list(select(chosen)), "select_by": select_by,
                          "weights": kind, "val_acc": chosen["acc"], "val_loss": chosen["loss"],
                          "val_macro_f1": chosen["macro_f1"],
                          **{f"val_{k}": chosen[k] for k in ("map", "micro_f1") if k in chosen}}
            if self.world.is_main:
                weights = parts.ema.model if use_ema else parts.model
                save_model(weights, parts.prep, self.output_dir / "best", info={
                    **state.best, **state.plan, "labels": state.labels, "model": self.config.model.name,
                    "pretrained": self.config.model.pretrained,
                    "data": parts.source.describe_split(), "train_images": self.train_images(),
                    "val_images": chosen["count"]})
        state.stale_epochs = 0 if improved else state.stale_epochs + 1
        return improved

    def say_epoch(self, val: dict, ema: dict | None, improved: bool, started: float) -> None:
        row = self.state.rows[-1]
        ema_note = f" | EMA acc {ema['acc']:.3f}" if ema else ""
        scores = (f"mAP {val['map']:.3f} micro-F1 {val['micro_f1']:.3f} exact {val['acc']:.3f}"
                  if self.multi_label else f"acc {val['acc']:.3f} top3 {val['top3']:.3f}")
        self.say(f"epoch {self.state.epoch}/{self.config.recipe.epochs}: train loss {row['train_loss'][:6]} "
                 f"acc {row['train_acc'][:5]} | val loss {val['loss']:.4f} {scores} "
                 f"macro-F1 {val['macro_f1']:.3f}{ema_note}"
                 f" | {time.time() - started:.0f}s{'  * best, saved' if improved else ''}")

    def next_epoch(self) -> bool:
        """Move on to the next epoch's first step; True when early stopping says enough."""
        state, recipe = self.state, self.config.recipe
        early_stop = bool(recipe.patience) and state.stale_epochs >= recipe.patience
        state.epoch, state.step, state.totals = state.epoch + 1, 0, new_totals()
        state.finished = early_stop or state.epoch > recipe.epochs
        return early_stop

    def save_last(self) -> None:
        """last/: the weights and everything a resumed run continues from (RunState.to_checkpoint)."""
        if not self.world.is_main:
            return
        parts = self.parts
        states = {name: getattr(parts, name).state_dict() for name in RESUMED_PARTS}
        if parts.ema:
            states["ema"] = parts.ema.state_dict()
        save_model(parts.model, parts.prep, self.output_dir / "last",
                   training_state=self.state.to_checkpoint(states))

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
        self.say(f"Stopped in epoch {state.epoch} after step {state.step} of {self.parts.sampler.steps}; "
                 f"saved {printable(self.output_dir / 'last')}. Continue with: python train.py --resume "
                 f"{shell_word(self.output_dir)}",
                 file=sys.stderr)

    # -- after the epochs -------------------------------------------------------------------------
    def finish(self, stop: StopSignal) -> None:
        """After the last epoch: the report on best/ (calibration, pictures), tracked files."""
        state = self.state
        if (stop.signum or self.stopped) and state.epoch <= self.config.recipe.epochs:
            self.say(f"Stopped after epoch {state.epoch - 1}; saved {printable(self.output_dir / 'last')}. "
                     f"Continue with: python train.py --resume {shell_word(self.output_dir)}",
                     file=sys.stderr)
        elif self.world.is_main and state.best["score"] is not None:
            alone = EvalContext(self.device, self.parts.dtype, World(), self.ctx.bad_files)  # this process
            state.best.update(report_run(alone, self.output_dir, state.labels, self.parts.report_loader,
                                         state.rows, self.config.recipe.calibrate, self.multi_label))
            pictures, tables = sorted(self.output_dir.glob("*.png")), sorted(self.output_dir.glob("*.csv"))
            self.tracker.log_files(pictures + tables)
            self.tracker.log_model(self.output_dir / "best")

    def summary(self, stop: StopSignal) -> dict:
        """The skipped files and the best epoch said; the summary train.py reports."""
        bad_files, best = self.ctx.bad_files, self.state.best
        if bad_files:
            self.say(f"{len(bad_files)} unreadable image(s) were skipped:", file=sys.stderr)
            for path, reason in sorted(bad_files.items()):
                self.say(f"  {path}: {reason}", file=sys.stderr)
        minutes = (time.time() - self.started) / 60
        if best["score"] is not None:
            best_dir = self.output_dir / "best"
            interval = small_set_note(best["val_acc"], self.last_val["count"])
            scores = (f"mAP {best['val_map']:.3f}, exact match {best['val_acc']:.3f}" if "val_map" in best
                      else f"acc {best['val_acc']:.3f}")
            self.say(f"Done in {minutes:.1f} min. Best epoch {best['epoch']} ({best['weights']} weights): "
                     f"val {scores}{interval}, macro-F1 {best['val_macro_f1']:.3f}, "
                     f"loss {best['val_loss']:.4f}.{probe_note(best, self.state.plan, self.state.rows)} "
                     f"Model: {printable(best_dir)}  (try: python predict.py --model {shell_word(best_dir)} "
                     f"--image IMAGE)")
        return {**best, "minutes": minutes, "bad_files": bad_files, "stopped_by": stop.signum,
                "train_count": self.train_images(), "val_count": self.last_val["count"]}

    def train_images(self) -> int:
        """The training images every epoch uses: the whole training split but the unreadable files (the
        count the summary and training_info.json give; under torchrun the few images an epoch wraps
        round to even out the processes' shares are not counted twice, and the samples uneven shards
        leave out are not counted)."""
        parts = self.parts
        unreadable = sum(1 for path in self.ctx.bad_files if path in parts.sample_index)
        return len(parts.source.train()) - unreadable - parts.sampler.left_out

    def release(self) -> None:
        """The output folder's lock (held by the main process from set-up to the end)."""
        if self.parts.lock is not None:
            self.parts.lock.release()


def train(config: TrainConfig, given: set[str] = frozenset()) -> dict:
    """Train as ``config`` says (``given``: the options typed on the command line, which a resumed
    run must not contradict). Returns the summary of Trainer.train."""
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
    try:
        device, plan = pick_device(device_choice), None
        if saved is None:  # a resumed run continues with the options its first session decided
            config, plan = plan_run(config, given, world, device)
        trainer = Trainer(config, world, device, saved, plan)
        try:
            return trainer.train()
        finally:
            trainer.release()
    finally:
        close_world(world)
