"""A training run as named steps: set up (data, model, loaders, optimizer, resume), then per epoch
train, validate, keep the best, save ``last/``; then finish (report, tracking, summary).

    Trainer(config, world, device, saved_state).run()

``TrainState`` is everything a run continues from; it is saved in ``last/training_state.pt``
together with the optimizer, scheduler, scaler and EMA states (see ``save_last``).
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field, replace

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from vitclassifier.config import TrainConfig
from vitclassifier.data.audit import audit_dataset, format_report
from vitclassifier.data.dataset import ImageFolderDataset, collate_skipping_bad, fill_caches
from vitclassifier.data.folders import load_splits
from vitclassifier.data.transforms import eval_transform, train_transform
from vitclassifier.devices import autocast_dtype, configure_backends, loader_workers, pick_device, run_in_bf16
from vitclassifier.errors import UserError
from vitclassifier.model.checkpoint import check_output_dir, save_model
from vitclassifier.model.runnable import HeadOnly
from vitclassifier.model.vit import create_model, freeze, set_backbone_dropout
from vitclassifier.reporting.report import report_run
from vitclassifier.reporting.tracking import make_tracker
from vitclassifier.training.distributed import (
    EpochSampler,
    ShardSampler,
    World,
    close_world,
    epoch_seed,
    init_world,
    merge_dicts_across,
    sum_across,
)
from vitclassifier.training.features import can_cache_features, extract_features
from vitclassifier.training.loop import Run, check_classes_readable, evaluate, train_epoch
from vitclassifier.training.metrics import SELECT_BY, metrics_row, new_totals, read_metrics, write_metrics
from vitclassifier.training.recipe import (
    EMA,
    class_weights,
    make_optimizer,
    mix_batches,
    set_trainable,
    staged_warmup_cosine,
)
from vitclassifier.training.resume import (
    StopSignal,
    data_fingerprint,
    ignore_stop_signals,
    prepare_resume,
    saved_options,
)

RESUMED_PARTS = ("optimizer", "scheduler", "scaler")  # Run attributes saved with the training state


@dataclass
class TrainState:
    """Where a run is: the next (epoch, step), that epoch's running sums, the best model so far."""
    epoch: int = 1
    step: int = 0
    totals: dict = field(default_factory=new_totals)
    best: dict = field(default_factory=lambda: {"epoch": 0, "score": None})
    stale_epochs: int = 0
    rows: list[dict] = field(default_factory=list)  # metrics.csv so far


class Trainer:
    def __init__(self, config: TrainConfig, world: World, device: torch.device, saved: dict | None = None):
        self.config, self.world, self.device, self.saved = config, world, device, saved
        self.output_dir = config.runtime.output_dir
        self.dtype = autocast_dtype(device, config.runtime.precision)
        self.state = TrainState()
        self.say = print if world.is_main else (lambda *a, **k: None)

    # -- set-up ---------------------------------------------------------------------------------
    def load_data(self) -> None:
        """Labels and the train/val split; on a resume, the data must be what that run trained on."""
        data = self.config.data
        self.labels, self.train_samples, self.val_samples = load_splits(data.folder, data.val_split,
                                                                        self.config.recipe.seed)
        self.fingerprint = data_fingerprint(self.train_samples, data.folder)
        saved = self.saved
        if saved is not None and (saved["labels"] != self.labels or saved["data"] != self.fingerprint):
            raise UserError(f"cannot resume {saved['dir']}: the data in {data.folder} changed since that run "
                            f"(classes then: {saved['labels']}, now: {self.labels}; "
                            f"or training files added/removed)")
        if self.world.is_main:
            report = audit_dataset(self.labels, self.train_samples, self.val_samples, image_size=None,
                                   decode=False)
            notes = format_report(report, brief=True)
            if notes:
                print(notes)
            if report["fatal"]:
                raise UserError("; ".join(report["fatal"]))

    def build_model(self) -> None:
        """The classifier for our labels, frozen as asked, on the device, and the Run the loops share."""
        options, recipe, device = self.config.model, self.config.recipe, self.device
        torch.manual_seed(recipe.seed)
        source = str(self.saved["dir"]) if self.saved else options.name
        pretrained = self.saved is not None or options.pretrained
        model, self.prep = create_model(source, self.labels, pretrained=pretrained, dropout=options.dropout,
                                        image_size=options.image_size)
        set_backbone_dropout(model, options.backbone_dropout)
        freeze(model, options.freeze)
        self.trainable = {id(p) for p in model.parameters() if p.requires_grad}  # what --freeze leaves
        if options.grad_checkpointing:  # renamed in transformers 5.x; the old name still works before that
            (getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable)()
        model.to(device)
        configure_backends(device)
        run_in_bf16(model, device, self.dtype, training=True)
        model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        if self.world.is_main:  # best + last + optimizer moments + EMA + one copy while a save is swapped in
            check_output_dir(self.output_dir, needed_bytes=(6 + (recipe.ema > 0)) * model_bytes + 2**20)
        self.model = model
        self.shared = Run(model, model, device, self.dtype, self.world, recipe,
                        mix=mix_batches(len(self.labels), recipe.mixup, recipe.cutmix),
                        ema=EMA(model, recipe.ema) if recipe.ema > 0 else None)
        if recipe.class_weights == "auto":
            self.shared.loss_weight = class_weights(self.train_labels, len(self.labels)).to(device)

    @property
    def train_labels(self) -> list[int]:
        return [label for _, label in self.train_samples]

    def build_loaders(self) -> None:
        """Datasets (decoded once into the cache), the feature shortcut, samplers and loaders."""
        data, prep = self.config.data, self.prep
        self.loader_options = dict(batch_size=data.batch_size, collate_fn=collate_skipping_bad,
                                   num_workers=loader_workers(data.num_workers, self.device),
                                   pin_memory=self.device.type == "cuda", worker_init_fn=ignore_stop_signals)
        train_set = ImageFolderDataset(self.train_samples, train_transform(prep, **data.augment),
                                       prep.resize_size)
        self.val_set = ImageFolderDataset(self.val_samples, eval_transform(prep), prep.resize_size)
        if data.cache_mb:  # before the loaders fork their workers, which then share the cache
            self.say(fill_caches([train_set, self.val_set], data.cache_mb * 2**20))
        self.train_data, val_data, self.as_net = train_set, self.val_set, (lambda net: net)
        if can_cache_features(self.config):  # nothing changes between epochs: run the frozen backbone once
            start = time.time()
            self.train_data, val_data = (
                extract_features(self.model, s, data.batch_size, self.device, self.dtype)
                for s in (train_set, self.val_set))
            self.as_net = HeadOnly
            train_set.cache.clear()  # no longer read: free it (the validation images serve the report)
            self.say(f"Frozen backbone, no augmentation: computed its features once in "
                     f"{time.time() - start:.1f}s; the epochs train the head on them")
        weights = None
        if data.balanced_sampler:
            per_class = class_weights(self.train_labels, len(self.labels))
            weights = per_class[torch.tensor(self.train_labels)].double()
        recipe = self.config.recipe
        self.sampler = EpochSampler(len(self.train_data), data.batch_size * recipe.grad_accum, recipe.seed,
                                    self.world, weights)
        self.train_loader = DataLoader(self.train_data, sampler=self.sampler, **self.loader_options)
        self.val_loader = DataLoader(val_data, sampler=ShardSampler(len(val_data), self.world),
                                     **self.loader_options)

    def build_optimizer(self) -> None:
        """AdamW, the staged warm-up + cosine schedule (the head alone first with --freeze-epochs), scaler."""
        recipe, run = self.config.recipe, self.shared
        run.optimizer = make_optimizer(self.model, recipe.lr, recipe.weight_decay, recipe.layer_decay,
                                       recipe.head_lr)
        self.head_epochs = min(recipe.freeze_epochs, recipe.epochs)
        stages = [n * self.sampler.steps for n in (self.head_epochs, recipe.epochs - self.head_epochs) if n]
        schedule = staged_warmup_cosine(stages, recipe.warmup)
        run.scheduler = torch.optim.lr_scheduler.LambdaLR(run.optimizer, schedule)
        run.scaler = torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)

    def restore(self) -> None:
        """Continue a saved run: optimizer, scheduler, scaler and EMA, position, sums, best so far."""
        saved, run = self.saved, self.shared
        for part in RESUMED_PARTS + (("ema",) if run.ema else ()):
            getattr(run, part).load_state_dict(saved[part])
        run.bad_files = saved["bad_files"]
        self.state = TrainState(epoch=saved["epoch"], step=saved["step"], best=saved["best"],
                                stale_epochs=saved["stale_epochs"],
                                rows=read_metrics(self.output_dir / "metrics.csv", saved["epoch"] - 1))
        if self.world.is_main:  # the saved sums cover all processes; the others start this epoch at zero
            self.state.totals = saved["totals"]
        self.say(f"Resuming {saved['dir']} at epoch {saved['epoch']}, step {saved['step']} "
                 f"of {self.sampler.steps}")

    def set_up(self) -> None:
        self.load_data()
        self.build_model()
        self.build_loaders()
        self.build_optimizer()
        if self.saved is not None:
            self.restore()
        self.announce()

    def announce(self) -> None:
        config, world, model = self.config, self.world, self.model
        trained = sum(p.numel() for p in model.parameters() if id(p) in self.trainable)
        precision = str(self.dtype).replace("torch.", "") if self.dtype else "fp32"
        global_batch = world.size * config.data.batch_size * config.recipe.grad_accum
        processes = f" | {world.size} processes, global batch {global_batch}" if world.distributed else ""
        random_init = " (random init)" if config.model.no_pretrained else ""
        self.say(f"{len(self.labels)} classes, {len(self.train_samples)} training and "
                 f"{len(self.val_samples)} "
                 f"validation images | {config.model.name}{random_init} "
                 f"@ {self.prep.image_size}px, {trained:,} of {sum(p.numel() for p in model.parameters()):,} "
                 f"parameters trained | {self.device.type}, {precision}{processes}")

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
        state, seed = self.state, self.config.recipe.seed
        self.enter_stage(state.epoch)
        if state.step == 0:  # metrics.csv shows the LR an epoch starts with, also when it was resumed
            state.totals["lr"] = self.shared.scheduler.get_last_lr()[-1]
        self.sampler.set_epoch(state.epoch, start_batch=state.step)
        self.train_data.epoch_seed = epoch_seed(seed, state.epoch)  # augmentation: (seed, epoch, image) only
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
        check_classes_readable(run.bad_files, self.train_samples, self.labels)
        return val, ema

    def keep_best(self, val: dict, ema: dict | None, train_count: int) -> bool:
        """Save best/ when the better of the raw and EMA weights beats the best so far."""
        select_by = self.config.recipe.select_by
        select, state = SELECT_BY[select_by], self.state
        use_ema = ema is not None and select(ema) > select(val)
        chosen = ema if use_ema else val
        improved = state.best["score"] is None or list(select(chosen)) > state.best["score"]
        if improved:
            state.best = {"epoch": state.epoch, "score": list(select(chosen)), "select_by": select_by,
                          "weights": "ema" if use_ema else "raw", "val_acc": chosen["acc"],
                          "val_loss": chosen["loss"], "val_macro_f1": chosen["macro_f1"]}
            if self.world.is_main:
                weights = self.shared.ema.model if use_ema else self.model
                save_model(weights, self.prep, self.output_dir / "best", info={
                    **state.best, "labels": self.labels, "model": self.config.model.name,
                    "train_images": train_count, "val_images": chosen["count"]})
        state.stale_epochs = 0 if improved else state.stale_epochs + 1
        return improved

    def save_last(self) -> None:
        """last/: the weights and everything a resumed run continues from (TrainState and more)."""
        if not self.world.is_main:
            return
        state, run = self.state, self.shared
        save_model(self.model, self.prep, self.output_dir / "last", training_state={
            "epoch": state.epoch, "step": state.step, "totals": state.totals, "labels": self.labels,
            "data": self.fingerprint, "options": saved_options(self.config), "best": state.best,
            "stale_epochs": state.stale_epochs, "bad_files": run.bad_files,
            **{part: getattr(run, part).state_dict() for part in RESUMED_PARTS},
            **({"ema": run.ema.state_dict()} if run.ema else {})})

    # -- the run --------------------------------------------------------------------------------
    def end_epoch(self, started: float) -> bool:
        """Validate, record, keep the best, save last/; True when early stopping says enough."""
        state, recipe = self.state, self.config.recipe
        val, ema = self.validate()
        totals = self.summed(state.totals)
        state.rows.append(metrics_row(state.epoch, totals, val, ema, time.time() - started))
        self.tracker.log_epoch(state.epoch, state.rows[-1])
        improved = self.keep_best(val, ema, totals["count"])
        row = state.rows[-1]
        ema_note = f" | EMA acc {ema['acc']:.3f}" if ema else ""
        self.say(f"epoch {state.epoch}/{recipe.epochs}: train loss {row['train_loss'][:6]} "
                 f"acc {row['train_acc'][:5]} | "
                 f"val loss {val['loss']:.4f} acc {val['acc']:.3f} top3 {val['top3']:.3f} "
                 f"macro-F1 {val['macro_f1']:.3f}{ema_note}"
                 f" | {time.time() - started:.0f}s{'  * best, saved' if improved else ''}")
        self.last_totals, self.last_val = totals, val
        state.epoch, state.step, state.totals = state.epoch + 1, 0, new_totals()
        self.save_last()
        if self.world.is_main:
            write_metrics(self.output_dir / "metrics.csv", state.rows)
        early_stop = bool(recipe.patience) and state.stale_epochs >= recipe.patience
        if early_stop:
            self.say(f"Early stop: no better validation score for {recipe.patience} epochs")
        return early_stop

    def stopped_mid_epoch(self) -> None:
        """A stop signal inside an epoch: keep this step and the epoch's running sums."""
        state = self.state
        state.totals = self.summed(state.totals)
        self.save_last()
        self.say(f"Stopped in epoch {state.epoch} after step {state.step} of {self.sampler.steps}; saved "
                 f"{self.output_dir / 'last'}. Continue with: python train.py --resume {self.output_dir}",
                 file=sys.stderr)

    def train_epochs(self, stop: StopSignal) -> bool:
        """The epoch loop; False when a stop signal cut an epoch short."""
        state, epochs = self.state, self.config.recipe.epochs
        if state.epoch > epochs:
            self.say(f"{self.saved['dir']} already finished all {epochs} epochs; raise --epochs to train on")
        while state.epoch <= epochs:
            started = time.time()
            if not self.train_one_epoch(stop):
                self.stopped_mid_epoch()
                return False
            if self.end_epoch(started) or stop.signum:
                break
        return True

    def finish(self, stop: StopSignal) -> None:
        """After the last epoch: the report on best/ (calibration, pictures), tracked files."""
        state = self.state
        if stop.signum and state.epoch <= self.config.recipe.epochs:
            self.say(f"Stopped after epoch {state.epoch - 1}; saved {self.output_dir / 'last'}. "
                     f"Continue with: python train.py --resume {self.output_dir}", file=sys.stderr)
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
        self.last_totals, self.last_val = self.state.totals, {"count": 0}
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
                "stopped_by": stop.signum, "train_count": self.last_totals["count"],
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
                     f"Model: {best_dir}  (try: python predict.py --model {best_dir} --image IMAGE)")


def train(config: TrainConfig, given: set[str] = frozenset()) -> dict:
    """Train as ``config`` says (``given``: the options typed on the command line, which a resumed
    run must not contradict). Returns the summary of Trainer.run."""
    config, saved = prepare_resume(config, given)  # first: a resumed run takes its options from the save
    world, device_choice = init_world(config.runtime.device)
    try:
        return Trainer(config, world, pick_device(device_choice), saved).run()
    finally:
        close_world(world)
