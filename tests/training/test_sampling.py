"""training/distributed.py's seeds and samplers: seeds torch takes, a balanced draw, shards that cover an
epoch once, a resume that skips whole batches."""
from __future__ import annotations

from collections import Counter

import pytest
import torch

from vitclassifier.config import TrainConfig
from vitclassifier.training.distributed import EpochSampler, ShardSampler, World, step_seed
from vitclassifier.training.recipe import class_weights


@pytest.mark.parametrize("seed", [0, 100_000_000, -30_000_000, 2**70])
def test_any_seed_gives_a_seed_torch_takes(seed):
    recipe = TrainConfig.from_options({"seed": seed}).recipe
    torch.manual_seed(step_seed(recipe, epoch=5, step=10**6, micro=3, rank=7))


def test_balanced_sampler_draws_classes_equally_and_repeatably():
    labels = torch.tensor([0] * 900 + [1] * 100)
    weights = class_weights(labels.tolist(), 2)[labels].double()
    sampler = EpochSampler(len(labels), batch_size=10, seed=3, world=World(), weights=weights)
    sampler.set_epoch(1)
    first = list(sampler)
    counts = Counter(labels[first].tolist())
    assert abs(counts[0] - counts[1]) < 100  # about 500 each instead of 900 / 100
    assert first == list(sampler)  # same (seed, epoch), same draw
    sampler.set_epoch(2)
    assert first != list(sampler)


def test_sampler_shards_cover_the_epoch_once_and_resume_skips_whole_batches():
    plain = EpochSampler(50, batch_size=4, seed=0, world=World())
    plain.set_epoch(1)
    order = list(plain)
    assert sorted(order) == list(range(50)) and plain.steps == 13  # every image; the last batch holds 2
    shards = [EpochSampler(50, batch_size=2, seed=0, world=World(rank, 2)) for rank in (0, 1)]
    for shard in shards:
        shard.set_epoch(1)
    assert sorted(list(shards[0]) + list(shards[1])) == sorted(order)
    plain.set_epoch(1, start_batch=3)
    assert list(plain) == order[12:] and len(plain) == 38
    uneven = [EpochSampler(51, batch_size=4, seed=0, world=World(rank, 2)) for rank in (0, 1)]
    for shard in uneven:
        shard.set_epoch(1)
    first, second = list(uneven[0]), list(uneven[1])
    assert len(first) == len(second) == 26 and uneven[0].steps == uneven[1].steps == 7  # equal steps
    assert set(first + second) == set(range(51))  # every image; one of them twice, to even out the shares
    validation = [list(ShardSampler(7, World(rank, 2))) for rank in (0, 1)]
    assert sorted(validation[0] + validation[1]) == list(range(7))

