"""The set-up steps of a training run, before the first epoch: the data and its split, the model
(frozen as asked, on the device), the output folder claimed, the loaders (decoded once into the
cache; batches augmented on the device), the optimizer and schedule, and a saved run restored.
``Trainer`` (trainer.py) builds on these and runs the epochs."""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from functools import partial

import torch
from torch.utils.data import DataLoader, Dataset

from vitclassifier.config import TrainConfig
from vitclassifier.data.audit import audit_dataset, format_report
from vitclassifier.data.augment import BatchAugment, train_decode
from vitclassifier.data.dataset import ImageFolderDataset, collate_skipping_bad, fill_caches
from vitclassifier.data.exclude import apply_exclude
from vitclassifier.data.shards import NameIndex, ShardStream, TrainStream
from vitclassifier.data.sources import describe_source, is_stream, load_source
from vitclassifier.data.transforms import eval_transform
from vitclassifier.devices import autocast_dtype, configure_backends, loader_workers
from vitclassifier.errors import UserError
from vitclassifier.model.attention import run_in_bf16
from vitclassifier.model.runnable import HeadOnly
from vitclassifier.model.vit import create_model, freeze, set_backbone_dropout
from vitclassifier.reporting.metrics import new_totals, read_metrics
from vitclassifier.training.distributed import EpochSampler, ShardSampler, World, epoch_seed, on_main_process
from vitclassifier.training.features import can_cache_features, extract_features
from vitclassifier.training.loop import Run
from vitclassifier.training.output import claim_output_dir
from vitclassifier.training.recipe import (
    EMA,
    class_weights,
    make_optimizer,
    mix_batches,
    staged_warmup_cosine,
)
from vitclassifier.training.resume import data_fingerprint, ignore_stop_signals

RESUMED_PARTS = ("optimizer", "scheduler", "scaler")  # Run attributes saved with the training state


@dataclass
class TrainState:
    """Where a run is: the next (epoch, step), that epoch's running sums, the best model so far."""
    epoch: int = 1
    step: int = 0
    totals: dict = field(default_factory=new_totals)
    best: dict = field(default_factory=lambda: {"epoch": 0, "score": None})
    stale_epochs: int = 0
    rows: list[dict] = field(default_factory=list)  # metrics.csv so far (saved with the state too)
    finished: bool = False  # all epochs done, or stopped early: a resume has nothing left to do


class TrainerSetUp:
    """A run's configuration, its place among the processes, and the set-up steps."""

    def __init__(self, config: TrainConfig, world: World, device: torch.device, saved: dict | None = None):
        self.config, self.world, self.device, self.saved = config, world, device, saved
        self.output_dir = config.runtime.output_dir
        self.dtype = autocast_dtype(device, config.runtime.precision)
        self.state = TrainState()
        self.say = print if world.is_main else (lambda *a, **k: None)
        self.lock = None  # the output folder's, held by the main process from set-up to the end
        self.stopped = False  # a stop signal reached some process (decided together: stop_requested)

    # -- set-up ---------------------------------------------------------------------------------
    def load_data(self) -> None:
        """Labels and the train/val split; on a resume, the data must be what that run trained on."""
        data = self.config.data
        self.labels, self.train_samples, self.val_samples = load_source(
            data.folder, data.val_split, self.config.recipe.seed, data.data_format, data.image_column,
            data.label_column)
        self.source = describe_source(data.folder, data.data_format)  # recorded in the checkpoint
        self.fingerprint = (self.train_samples.fingerprint() if is_stream(self.train_samples)
                            else data_fingerprint(self.train_samples, data.folder))
        if data.exclude is not None:
            self.leave_out_excluded()
        saved = self.saved
        if saved is not None and (saved["labels"] != self.labels or saved["data"] != self.fingerprint):
            raise UserError(f"cannot resume {saved['dir']}: the data in {data.folder} changed since that run "
                            f"(classes then: {saved['labels']}, now: {self.labels}; "
                            f"or training files added/removed, or the --exclude list changed)")
        on_main_process(self.world, self.device, self.audit)

    def leave_out_excluded(self) -> None:
        """--exclude: the listed images left out; what was left out goes into the checkpoint's
        training_info.json (with the source) and into the data fingerprint, so a resume refuses a
        changed list as it refuses changed data."""
        data = self.config.data
        if is_stream(self.train_samples):
            raise UserError("--exclude works on images listed one by one (folders, label files, datasets), "
                            "not on streamed tar shards: leave the files out of the shards instead")
        self.train_samples, self.val_samples, record = apply_exclude(
            data.exclude, data.folder, self.train_samples, self.val_samples, quiet=not self.world.is_main)
        self.source = {**self.source, "exclude": record}
        self.fingerprint = f"{data_fingerprint(self.train_samples, data.folder)}+exclude:{record['sha256']}"

    def audit(self) -> None:
        """The quick audit (no image decoded): notes printed, what makes training impossible refused.
        Shards are not read before training (their counts come from the index): nothing to audit here."""
        if is_stream(self.train_samples):
            return
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
        torch.manual_seed(recipe.seed % 2**63)
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
        # best, best.tmp: 1x each; last, last.tmp: 3x (weights, AdamW moments); the EMA in last, last.tmp
        needed = (8 + 2 * (recipe.ema > 0)) * model_bytes + 2**20
        self.lock = on_main_process(self.world, device, lambda: claim_output_dir(
            self.output_dir, self.config.data.folder, self.saved is not None, self.config.runtime.overwrite,
            needed))
        self.model = model
        self.shared = Run(model, model, device, self.dtype, self.world, recipe,
                        mix=mix_batches(len(self.labels), recipe.mixup, recipe.cutmix),
                        ema=EMA(model, recipe.ema) if recipe.ema > 0 else None)
        if recipe.class_weights == "auto":
            self.shared.loss_weight = class_weights(self.train_labels, len(self.labels)).to(device)

    @property
    def train_labels(self) -> list[int]:
        if is_stream(self.train_samples):
            return self.train_samples.label_list()
        return [label for _, label in self.train_samples]

    def build_loaders(self) -> None:
        """Datasets (decoded once into the cache), the feature shortcut, samplers and loaders. The
        loaders only decode and resize to same-size uint8 squares; BatchAugment augments whole
        batches on the training device."""
        data, prep, recipe = self.config.data, self.prep, self.config.recipe
        workers = loader_workers(data.num_workers, self.device)
        self.loader_options = dict(batch_size=data.batch_size, collate_fn=collate_skipping_bad,
                                   num_workers=workers, persistent_workers=workers > 0,
                                   pin_memory=self.device.type == "cuda", worker_init_fn=ignore_stop_signals)
        if is_stream(self.train_samples):
            return self.build_stream_loaders()
        features = can_cache_features(self.config)  # nothing changes between epochs: run the backbone once
        decode = eval_transform(prep) if features else train_decode(prep, data.augment["crop"],
                                                                     data.augment["rotate"])
        train_set = ImageFolderDataset(self.train_samples, decode, prep.resize_size)
        self.val_set = ImageFolderDataset(self.val_samples, eval_transform(prep), prep.resize_size)
        if data.cache_mb:  # before the loaders fork their workers, which then share the cache
            self.say(fill_caches([train_set, self.val_set], data.cache_mb * 2**20))
        self.train_data, val_data, self.as_net = train_set, self.val_set, (lambda net: net)
        if features:
            self.train_data, val_data = self.cache_features(train_set)
        else:
            self.shared.augment = BatchAugment(prep, **data.augment)
        self.shared.sample_index = {str(path): index for index, (path, _) in enumerate(self.train_samples)}
        weights = None
        if data.balanced_sampler:
            per_class = class_weights(self.train_labels, len(self.labels))
            weights = per_class[torch.tensor(self.train_labels)].double()
        per_step = data.batch_size * recipe.grad_accum  # the last step of an epoch may be smaller
        self.sampler = EpochSampler(len(self.train_data), per_step, recipe.seed, self.world, weights)
        self.train_loader = DataLoader(self.train_data, sampler=self.sampler, **self.loader_options)
        self.val_loader = DataLoader(val_data, sampler=ShardSampler(len(val_data), self.world),
                                     **self.loader_options)

    def build_stream_loaders(self) -> None:
        """Shards: streamed every epoch (no decode cache, no feature shortcut). The training stream
        plans each epoch itself (TrainStream: steps, set_epoch, already_drawn), as EpochSampler does."""
        data, prep, recipe, world = self.config.data, self.prep, self.config.recipe, self.world
        if data.balanced_sampler:
            raise UserError("--balanced-sampler draws images at random, which streamed shards cannot do: "
                            "drop it, or use --class-weights auto")
        self.loader_options["persistent_workers"] = False  # workers forked per epoch see that epoch's plan
        self.shared.augment, self.as_net = BatchAugment(prep, **data.augment), (lambda net: net)
        decode = train_decode(prep, data.augment["crop"], data.augment["rotate"])
        self.sampler = TrainStream(self.train_samples, decode, prep.resize_size, data.batch_size,
                                   data.batch_size * recipe.grad_accum, partial(epoch_seed, recipe.seed),
                                   world.rank, world.size)
        if self.sampler.uneven_note():
            self.say(self.sampler.uneven_note())
        self.train_data = self.sampler
        self.shared.sample_index = NameIndex()
        self.val_set = ShardStream(self.val_samples, eval_transform(prep), prep.resize_size, data.batch_size)
        share = copy.copy(self.val_set)  # this process's share; val_set stays whole for the final report
        share.every, share.offset = world.size, world.rank
        self.train_loader = DataLoader(self.sampler, **self.loader_options)
        self.val_loader = DataLoader(share, **self.loader_options)

    def cache_features(self, train_set: ImageFolderDataset) -> tuple[Dataset, Dataset]:
        """--freeze backbone without augmentation: the backbone's features of every image, computed
        once; the epochs then train the head on them."""
        start, batch_size = time.time(), self.config.data.batch_size
        train_data, val_data = (extract_features(self.model, s, batch_size, self.device, self.dtype)
                                for s in (train_set, self.val_set))
        self.as_net = HeadOnly
        train_set.cache.clear()  # no longer read: free it (the validation images serve the report)
        self.say(f"Frozen backbone, no augmentation: computed its features once in "
                 f"{time.time() - start:.1f}s; the epochs train the head on them")
        return train_data, val_data

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
        if saved.get("world_size", self.world.size) != self.world.size:
            raise UserError(f"cannot resume {saved['dir']}: it ran in {saved['world_size']} process(es), "
                            f"this is {self.world.size}; the epochs would be split differently. Resume with "
                            f"as many")
        for part in RESUMED_PARTS + (("ema",) if run.ema else ()):
            if part == "scaler" and not saved[part]:
                continue  # saved without fp16 (an empty state): a scaler switched on now starts fresh
            try:
                getattr(run, part).load_state_dict(saved[part])
            except (KeyError, ValueError, RuntimeError, TypeError, IndexError) as error:
                raise UserError(f"cannot load training state {saved['dir']}: its {part} state does not fit "
                                f"this run ({str(error).splitlines()[0]})") from None
        run.bad_files = saved["bad_files"]
        rows = saved.get("rows")  # older states: the rows are only in metrics.csv
        if isinstance(rows, list):
            rows = [row for row in rows if isinstance(row, dict) and str(row.get("epoch", "")).isdigit()
                    and int(row["epoch"]) < saved["epoch"]]
        else:
            rows = read_metrics(self.output_dir / "metrics.csv", saved["epoch"] - 1)
        self.state = TrainState(epoch=saved["epoch"], step=saved["step"], best=saved["best"],
                                stale_epochs=saved["stale_epochs"], rows=rows)
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

