"""``train.py --folds K``: k-fold cross-validation before the run, so a small set's figures come with
their spread (one validation split of a few dozen images says little).

All labelled images of a listed source (its training and validation splits together) are embedded
once with the evaluation transform, by the run's model as built for training (the cached-features
path, features.extract_features); then each of K stratified folds (data/folds.py) is validated by a
linear probe fitted on the other K - 1 (training/probe.py): seconds, not K fine-tuning runs. The
mean and 95% interval of accuracy and macro-F1, and each class's recall, across the folds
(reporting/intervals.fold_summary) are printed and recorded in training_info.json's "folds" (the model
card shows them); the run then trains its model on the training split as usual. The probe needs
features worth fitting, so random weights are refused, as are streamed shards (read in order only).
"""
from __future__ import annotations

import time

import torch

from vitclassifier.config import TrainConfig
from vitclassifier.data.dataset import ImageFolderDataset
from vitclassifier.data.folds import check_fold_count, fold_of_each
from vitclassifier.data.sources import Source
from vitclassifier.data.transforms import eval_transform
from vitclassifier.devices import autocast_dtype
from vitclassifier.errors import UserError
from vitclassifier.reporting.intervals import Interval, confusion_of, fold_summary, macro_f1s
from vitclassifier.text import printable
from vitclassifier.training.distributed import World
from vitclassifier.training.features import extract_features
from vitclassifier.training.probe import feature_tensors, fit_probe
from vitclassifier.training.setup import build_model, main_print

METHOD = "linear probe on the pre-trained features"
RECALLS_SHOWN = 5  # the weakest classes' recall printed (all are recorded)


def check_folds(config: TrainConfig, source: Source) -> list:
    """Refuse --folds K before any work: streamed data, random weights, a class with fewer than K
    images. Returns the labelled samples the folds deal (training, then validation)."""
    k = config.recipe.folds
    if source.streamed:
        raise UserError(f"--folds {k} needs a listed data set: streamed shards are read in order only, so "
                        f"they cannot be dealt into folds")
    if not config.model.pretrained:
        raise UserError(f"--folds {k} needs pre-trained weights: each fold fits a linear probe on the "
                        f"backbone's features, and features of random weights say nothing (drop "
                        f"--no-pretrained, or --folds)")
    samples = list(source.train()) + list(source.val())
    check_fold_count([label for _, label in samples], k, source.labels)
    return samples


def cross_validate(config: TrainConfig, source: Source, world: World, device: torch.device) -> dict:
    """The K folds' summary for training_info.json ("folds": fold_summary's figures, the method and the
    number of images), its lines printed (main process)."""
    samples, started = check_folds(config, source), time.time()
    k, seed, classes = config.recipe.folds, config.recipe.seed, len(source.labels)
    dtype = autocast_dtype(device, config.runtime.precision)
    model, prep, _ = build_model(config, source.labels, device, dtype, None)
    images = ImageFolderDataset(samples, eval_transform(prep), prep.resize_size)
    features, labels = feature_tensors(extract_features(model, images, config.data.batch_size, device, dtype))
    del model
    fold = torch.tensor(fold_of_each(labels.tolist(), k, seed, source.labels))  # the readable images
    results = [fold_scores(features, labels, fold == part, classes, seed) for part in range(k)]
    summary = {"method": METHOD, "images": len(labels), "seed": seed, **fold_summary(results)}
    say = main_print(world)
    for line in fold_lines(summary, source.labels, time.time() - started):
        say(line)
    return summary


def fold_scores(features: torch.Tensor, labels: torch.Tensor, held: torch.Tensor, classes: int,
                seed: int) -> dict:
    """One fold: the probe fitted on the images not ``held``, scored on those held out."""
    probe = fit_probe(features[~held], labels[~held], classes, seed=seed)
    predicted, truth = probe.logits(features[held]).argmax(dim=1), labels[held]
    confusion = confusion_of(predicted.tolist(), truth.tolist(), classes)
    return {"acc": (predicted == truth).float().mean().item(), "macro_f1": float(macro_f1s(confusion)),
            "confusion": confusion.tolist()}


def fold_lines(summary: dict, names: list[str], seconds: float) -> list[str]:
    """A few lines: what was cross-validated, accuracy and macro-F1, the weakest classes' recall."""
    recalls = sorted((Interval(*r), name) for r, name in zip(summary.get("recall", []), names) if r)
    weakest = ", ".join(f"{printable(name)} {r.percent()}" for r, name in recalls[:RECALLS_SHOWN])
    more = f" (of {len(recalls)}; all in training_info.json)" if len(recalls) > RECALLS_SHOWN else ""
    return [f"{summary['folds']}-fold cross-validation, a {METHOD} of all {summary['images']} labelled "
            f"images, in {seconds:.0f}s:",
            f"  accuracy {Interval(*summary['acc']).percent()}, macro-F1 "
            f"{Interval(*summary['macro_f1']).percent()} (mean over the folds, Student t interval)",
            f"  recall, weakest classes first{more}: {weakest}",
            "  the model now trains on the training split as usual"]
