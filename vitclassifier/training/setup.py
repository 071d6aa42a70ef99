"""A training run's set-up, before the first epoch, as plain functions: the data (its Source, checked
against a run being resumed), the model (frozen as asked, on the device), the output folder claimed,
the loaders (decoded once into the cache; batches augmented on the device), the optimizer and
schedule, and a saved run's optimizer states restored. ``build_components`` returns them all as one
``Components``, which the Trainer (trainer.py) runs the epochs with."""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from torch.utils.data import DataLoader, Dataset

from vitclassifier.config import TrainConfig
from vitclassifier.data.augment import BatchAugment, train_decode
from vitclassifier.data.dataset import collate_skipping_bad, fill_caches
from vitclassifier.data.sources import Source, open_source
from vitclassifier.data.transforms import Preprocessing, eval_transform
from vitclassifier.devices import autocast_dtype, configure_backends, loader_workers
from vitclassifier.errors import UserError
from vitclassifier.model.attention import run_in_bf16
from vitclassifier.model.runnable import HeadOnly
from vitclassifier.model.vit import create_model, freeze, set_backbone_dropout
from vitclassifier.reporting.multilabel import PROBLEM_TYPE
from vitclassifier.training.distributed import EpochSampler, ShardSampler, World, epoch_seed, on_main_process
from vitclassifier.training.features import can_cache_features, extract_features
from vitclassifier.training.multilabel import check_options
from vitclassifier.training.output import OutputLock, claim_output_dir
from vitclassifier.training.probe import Probe
from vitclassifier.training.recipe import (
    EMA,
    class_weights,
    make_optimizer,
    mix_batches,
    staged_warmup_cosine,
)
from vitclassifier.training.resume import ignore_stop_signals
from vitclassifier.training.state import RESUMED_PARTS
from vitclassifier.urls import shown


@dataclass
class Components:
    """Everything a run trains with; built once by build_components."""
    source: Source
    model: torch.nn.Module  # the plain model: trained, evaluated and saved
    prep: Preprocessing
    dtype: torch.dtype | None  # autocast's
    trainable: set[int]  # ids of the parameters --freeze leaves trainable
    lock: OutputLock | None  # the output folder's, held by the main process
    ema: EMA | None
    mix: Callable | None  # mixup/cutmix batch transform
    loss_weight: torch.Tensor | None  # --class-weights auto
    augment: Callable | None  # on-device augmentation; None on cached features
    as_net: Callable  # model -> what the loaders' batches go through (HeadOnly on cached features)
    sample_index: dict  # training image name -> its index (augmentation seeds)
    sampler: object  # EpochSampler, or a TrainStream (streamed): steps, set_epoch, already_drawn
    train_loader: DataLoader
    val_loader: DataLoader  # this process's share of the validation set
    report_loader: DataLoader  # the whole validation set, for the report on best/
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    head_epochs: int  # --freeze-epochs, at most --epochs


def main_print(world: World) -> Callable:
    """print on the main process; nothing on the others."""
    return print if world.is_main else (lambda *a, **k: None)


def open_data(config: TrainConfig, quiet: bool = False) -> Source:
    """--data as its Source, --exclude applied (``quiet``: without saying what it left out)."""
    data = config.data
    source = open_source(data.folder, data.data_format, data.val_split, config.recipe.seed, data.image_column,
                         data.label_column, task=data.task, separator=data.label_separator)
    return source.excluding(data.exclude, quiet=quiet) if data.exclude is not None else source


def load_data(config: TrainConfig, world: World, device: torch.device, saved: dict | None) -> Source:
    """--data as its Source (--exclude applied), audited; on a resume it must be what that run trained on."""
    data, source = config.data, open_data(config, quiet=not world.is_main)
    if saved is not None and (saved["labels"] != source.labels or saved["data"] != source.fingerprint()):
        raise UserError(f"cannot resume {saved['dir']}: the data in {shown(data.folder)} changed since that "
                        f"run (classes then: {saved['labels']}, now: {source.labels}; "
                        f"or training files added/removed, or the --exclude list changed)")
    on_main_process(world, device, source.quick_audit)
    return source


def build_model(config: TrainConfig, labels: list[str], device: torch.device, dtype: torch.dtype | None,
                saved: dict | None, head: Probe | None = None
                ) -> tuple[torch.nn.Module, Preprocessing, set[int]]:
    """The classifier for our labels (a resumed run's own weights; ``head``: the automatic recipe's
    linear probe as its head), frozen as asked, on the device; with the ids of its trainable parameters."""
    options = config.model
    torch.manual_seed(config.recipe.seed % 2**63)
    name = str(saved["dir"]) if saved else options.name
    model, prep = create_model(name, labels, pretrained=saved is not None or options.pretrained,
                               dropout=options.dropout, image_size=options.image_size)
    if head is not None:
        head.load_into(model)
    set_backbone_dropout(model, options.backbone_dropout)
    freeze(model, options.freeze)
    trainable = {id(p) for p in model.parameters() if p.requires_grad}  # what --freeze leaves
    if options.grad_checkpointing:  # renamed in transformers 5.x; the old name still works before that
        (getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable)()
    model.to(device)
    configure_backends(device)
    run_in_bf16(model, device, dtype, training=True)
    return model, prep, trainable


def claim_output(config: TrainConfig, world: World, device: torch.device, model: torch.nn.Module,
                 source: Source, resuming: bool) -> OutputLock | None:
    """Check and lock --output-dir (main process), with room for every checkpoint a run keeps at once,
    never among the source's images."""
    model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    # best, best.tmp: 1x each; last, last.tmp: 3x (weights, AdamW moments); the EMA in last, last.tmp
    needed = (8 + 2 * (config.recipe.ema > 0)) * model_bytes + 2**20
    runtime = config.runtime
    return on_main_process(world, device, lambda: claim_output_dir(
        runtime.output_dir, config.data.folder, source.image_folders(), resuming, runtime.overwrite, needed))


def build_loaders(config: TrainConfig, source: Source, model: torch.nn.Module, prep: Preprocessing,
                  world: World, device: torch.device, dtype: torch.dtype | None) -> tuple:
    """(sampler, train loader, this process's validation loader, the whole validation set's loader,
    augment, as_net). The loaders only decode and resize to same-size uint8 squares; BatchAugment
    augments whole batches on the device."""
    data = config.data
    workers = loader_workers(data.num_workers, device)
    options = dict(batch_size=data.batch_size, collate_fn=collate_skipping_bad, num_workers=workers,
                   persistent_workers=workers > 0, pin_memory=device.type == "cuda",
                   worker_init_fn=ignore_stop_signals)
    val_set = source.validation_data(eval_transform(prep), prep.resize_size, data.batch_size)
    if source.streamed:
        return streamed_loaders(config, source, prep, world, val_set, options)
    return listed_loaders(config, source, model, prep, world, device, dtype, val_set, options)


def streamed_loaders(config: TrainConfig, source: Source, prep: Preprocessing, world: World, val_set: Dataset,
                     options: dict) -> tuple:
    """Streamed every epoch: no decode cache, no feature shortcut, no random draws. The training stream
    plans each epoch itself (TrainStream: steps, set_epoch, already_drawn), as EpochSampler does."""
    data, recipe = config.data, config.recipe
    if data.balanced_sampler:
        raise UserError("--balanced-sampler draws images at random, which streamed shards cannot do: "
                        "drop it, or use --class-weights auto")
    options = {**options, "persistent_workers": False}  # workers forked per epoch see that epoch's plan
    sampler = source.training_stream(train_decode(prep, data.augment["crop"], data.augment["rotate"]),
                                     prep.resize_size, data.batch_size, data.batch_size * recipe.grad_accum,
                                     partial(epoch_seed, recipe.seed), world.rank, world.size)
    if sampler.uneven_note():
        main_print(world)(sampler.uneven_note())
    share = val_set.share(world.rank, world.size)  # val_set stays whole for the report
    return (sampler, DataLoader(sampler, **options), DataLoader(share, **options),
            DataLoader(val_set, **options), BatchAugment(prep, **data.augment), lambda net: net)


def listed_loaders(config: TrainConfig, source: Source, model: torch.nn.Module, prep: Preprocessing,
                   world: World, device: torch.device, dtype: torch.dtype | None, val_set: Dataset,
                   options: dict) -> tuple:
    """Images decoded once into the cache; with nothing that changes between epochs, the backbone's
    features computed once (cache_features). EpochSampler shuffles (or draws, --balanced-sampler)."""
    data, recipe, say = config.data, config.recipe, main_print(world)
    features = can_cache_features(config)
    decode = eval_transform(prep) if features else train_decode(prep, data.augment["crop"],
                                                                 data.augment["rotate"])
    train_set = source.training_data(decode, prep.resize_size)
    if data.cache_mb:  # before the loaders fork their workers, which then share the cache
        say(fill_caches([train_set, val_set], data.cache_mb * 2**20))
    train_data, val_data = train_set, val_set
    if features:
        train_data, val_data = cache_features(model, train_set, val_set, data.batch_size, device, dtype, say)
    weights = None
    if data.balanced_sampler:
        per_class = class_weights(source.train_labels(), len(source.labels))
        weights = per_class[torch.tensor(source.train_labels())].double()
    per_step = data.batch_size * recipe.grad_accum  # the last step of an epoch may be smaller
    sampler = EpochSampler(len(train_data), per_step, recipe.seed, world, weights)
    return (sampler, DataLoader(train_data, sampler=sampler, **options),
            DataLoader(val_data, sampler=ShardSampler(len(val_data), world), **options),
            DataLoader(val_set, **options), None if features else BatchAugment(prep, **data.augment),
            HeadOnly if features else (lambda net: net))


def cache_features(model: torch.nn.Module, train_set: Dataset, val_set: Dataset, batch_size: int,
                   device: torch.device, dtype: torch.dtype | None, say: Callable) -> tuple[Dataset, Dataset]:
    """--freeze backbone without augmentation: the backbone's features of every image, computed
    once; the epochs then train the head on them."""
    start = time.time()
    train_data, val_data = (extract_features(model, images, batch_size, device, dtype)
                            for images in (train_set, val_set))
    train_set.cache.clear()  # no longer read: free it (the validation images serve the report)
    say(f"Frozen backbone, no augmentation: computed its features once in {time.time() - start:.1f}s; "
        f"the epochs train the head on them")
    return train_data, val_data


def announcement(config: TrainConfig, world: World, device: torch.device, parts: Components) -> str:
    """One line: classes, images, model, what is trained, where, in which precision."""
    model, source = parts.model, parts.source
    trained = sum(p.numel() for p in model.parameters() if id(p) in parts.trainable)
    precision = str(parts.dtype).replace("torch.", "") if parts.dtype else "fp32"
    global_batch = world.size * config.data.batch_size * config.recipe.grad_accum
    processes = f" | {world.size} processes, global batch {global_batch}" if world.distributed else ""
    random_init = " (random init)" if config.model.no_pretrained else ""
    kind = "multi-label, {} labels" if source.multi_label else "single-label, {} classes"
    return (f"{kind.format(len(source.labels))}, {len(source.train())} training and {len(source.val())} "
            f"validation images | {config.model.name}{random_init} "
            f"@ {parts.prep.image_size}px, {trained:,} of {sum(p.numel() for p in model.parameters()):,} "
            f"parameters trained | {device.type}, {precision}{processes}")


def build_optimizer(config: TrainConfig, model: torch.nn.Module, steps: int, device: torch.device,
                    dtype: torch.dtype | None) -> tuple:
    """AdamW, the staged warm-up + cosine schedule (the head alone first with --freeze-epochs), the
    scaler; and the number of head-only epochs."""
    recipe = config.recipe
    optimizer = make_optimizer(model, recipe.lr, recipe.weight_decay, recipe.layer_decay, recipe.head_lr)
    head_epochs = min(recipe.freeze_epochs, recipe.epochs)
    stages = [n * steps for n in (head_epochs, recipe.epochs - head_epochs) if n]
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, staged_warmup_cosine(stages, recipe.warmup))
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    return optimizer, scheduler, scaler, head_epochs


def build_components(config: TrainConfig, world: World, device: torch.device,
                     saved: dict | None, head: Probe | None = None) -> Components:
    """The set-up steps in order: data, model (``head``: the linear probe's), output folder, loaders,
    optimizer, a saved run's states. The output folder stays locked from here to the end of the run
    (released here if set-up fails)."""
    recipe, dtype = config.recipe, autocast_dtype(device, config.runtime.precision)
    source = load_data(config, world, device, saved)
    check_options(config, source.multi_label)
    model, prep, trainable = build_model(config, source.labels, device, dtype, saved, head)
    if source.multi_label:  # sigmoid outputs: transformers.pipeline reads this from config.json
        model.config.problem_type = PROBLEM_TYPE
    lock = claim_output(config, world, device, model, source, saved is not None)
    try:
        mix = mix_batches(len(source.labels), recipe.mixup, recipe.cutmix)
        ema = EMA(model, recipe.ema) if recipe.ema > 0 else None
        loss_weight = (class_weights(source.train_labels(), len(source.labels)).to(device)
                       if recipe.class_weights == "auto" else None)
        sampler, train_loader, val_loader, report_loader, augment, as_net = build_loaders(
            config, source, model, prep, world, device, dtype)
        optimizer, scheduler, scaler, head_epochs = build_optimizer(config, model, sampler.steps, device,
                                                                    dtype)
        parts = Components(source, model, prep, dtype, trainable, lock, ema, mix, loss_weight, augment,
                           as_net, source.sample_index(), sampler, train_loader, val_loader, report_loader,
                           optimizer, scheduler, scaler, head_epochs)
        if saved is not None:
            restore_parts(parts, saved, world)
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    return parts


def restore_parts(parts: Components, saved: dict, world: World) -> None:
    """A saved run's optimizer, scheduler, scaler and EMA states (RunState.from_checkpoint has the rest)."""
    if saved.get("world_size", world.size) != world.size:
        raise UserError(f"cannot resume {saved['dir']}: it ran in {saved['world_size']} process(es), "
                        f"this is {world.size}; the epochs would be split differently. Resume with "
                        f"as many")
    for name in RESUMED_PARTS + (("ema",) if parts.ema else ()):
        if name == "scaler" and not saved[name]:
            continue  # saved without fp16 (an empty state): a scaler switched on now starts fresh
        try:
            getattr(parts, name).load_state_dict(saved[name])
        except (KeyError, ValueError, RuntimeError, TypeError, IndexError) as error:
            raise UserError(f"cannot load training state {saved['dir']}: its {name} state does not fit "
                            f"this run ({str(error).splitlines()[0]})") from None
