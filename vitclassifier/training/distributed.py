"""Multi-process training with PyTorch's own engine (torchrun + DistributedDataParallel).

    torchrun --nproc_per_node=2 train.py --epochs 5

torchrun starts one process per device and sets RANK, LOCAL_RANK and WORLD_SIZE; started
plainly, train.py is a world of one and nothing here talks to other processes. Sums, not
averages, cross the processes, so validation metrics are exact counts over the whole set.
"""
from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from vitclassifier.config import RecipeOptions
from vitclassifier.errors import UserError

T = TypeVar("T")


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of epoch ``epoch`` of a run seeded with ``seed``: its shuffling, augmentation and
    dropout all derive from it, so a resumed run repeats them."""
    return (seed * 1000 + epoch) % 2**63  # any --seed: torch takes seeds below 2**64


def step_seed(recipe: RecipeOptions, epoch: int, step: int, micro: int, rank: int) -> int:
    """Dropout and mixing of a micro-batch depend only on (seed, epoch, step, micro-batch, process):
    a resumed run repeats them."""
    return ((((epoch_seed(recipe.seed, epoch)) * 100_003 + step) * 64 + micro) * 101 + rank) % 2**63


def image_seed(recipe: RecipeOptions, epoch: int, index: int, occurrence: int = 0) -> int:
    """The augmentation of training image ``index`` in ``epoch`` depends on (seed, epoch, image) only:
    the same whatever batch or micro-batch the image lands in, and on a resume. ``occurrence``: how
    often this process drew the image before in this epoch (--balanced-sampler draws with
    replacement), so that each draw gets a view of its own."""
    return ((epoch_seed(recipe.seed, epoch) * 1_000_003 + index) * 1_000_003 + occurrence) % 2**63


@dataclass
class World:
    """This process's place among the training processes."""
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Only the main process prints progress and writes files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def init_world(device_choice: str) -> tuple[World, str]:
    """Join the torchrun process group when there is one; returns the world and the device to use.

    gloo on CPU, NCCL on CUDA; each process takes the GPU of its LOCAL_RANK."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World(), device_choice
    world = World(int(os.environ["RANK"]), size, int(os.environ.get("LOCAL_RANK", "0")))
    use_cuda = device_choice in ("auto", "cuda") and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(world.local_rank)
        device_choice = f"cuda:{world.local_rank}"
    elif device_choice == "auto":
        device_choice = "cpu"
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return world, device_choice


def close_world(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()


def sum_across(values: list[float], world: World, device: torch.device) -> list[float]:
    """Element-wise sum of ``values`` over all processes (float64, so counts stay exact)."""
    if not world.distributed:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def sum_tensor_across(tensor: torch.Tensor, world: World) -> torch.Tensor:
    """Sum a tensor (e.g. a confusion matrix) over all processes."""
    if world.distributed:
        tensor = tensor.clone()
        dist.all_reduce(tensor)
    return tensor


def merge_dicts_across(mapping: dict, world: World) -> dict:
    """Union of a small dict (e.g. unreadable files and reasons) from every process."""
    if not world.distributed:
        return mapping
    gathered: list = [None] * world.size
    dist.all_gather_object(gathered, mapping)
    return {key: value for part in gathered for key, value in part.items()}


def augmentation_seeds(recipe: RecipeOptions, epoch: int, paths: list[str], sample_index: dict,
                       drawn: Counter) -> list[int]:
    """One seed per image of the batch (image_seed), counting this epoch's draws of each in ``drawn``."""
    seeds = []
    for path in paths:
        index = sample_index[path]
        seeds.append(image_seed(recipe, epoch, index, drawn[index]))
        drawn[index] += 1
    return seeds


class EpochSampler(Sampler[int]):
    """The training order of one epoch, the same on every process and every resume.

    The order is a permutation of the data set (or, with ``weights``, a weighted draw with
    replacement for balanced classes) seeded by (seed, epoch) only. Every image is used every epoch:
    the last batch of an epoch may be smaller than ``batch_size``. Process r takes every size-th index
    from r; under torchrun, when the images don't divide evenly, the order is wrapped round by
    ``padding`` (< size) images, as DistributedSampler does, so that every process has the same share
    and takes the same number of steps. ``set_epoch(epoch, start_batch)`` skips the batches a resumed
    run has already trained on."""

    def __init__(self, n: int, batch_size: int, seed: int, world: World, weights: torch.Tensor | None = None):
        self.n, self.batch_size, self.seed, self.world, self.weights = n, batch_size, seed, world, weights
        self.epoch, self.start_batch = 0, 0
        self.per_process = -(-n // world.size)  # rounded up: no image left out
        self.padding = self.per_process * world.size - n
        self.steps = max(1, -(-self.per_process // batch_size))
        self.left_out = 0  # every image is used every epoch (streamed shards may leave a few out)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def this_process_order(self) -> list[int]:
        """This process's share of the epoch's order (the order wrapped round by ``padding``)."""
        generator = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
        if self.weights is None:
            order = torch.randperm(self.n, generator=generator)
        else:
            order = torch.multinomial(self.weights, self.n, replacement=True, generator=generator)
        wrapped = order[torch.arange(self.n + self.padding) % self.n]
        return wrapped[self.world.rank::self.world.size].tolist()

    def already_drawn(self) -> list[int]:
        """The indices of the batches a resumed epoch skips (what the uninterrupted run drew before)."""
        return self.this_process_order()[:self.start_batch * self.batch_size]

    def __iter__(self):
        return iter(self.this_process_order()[self.start_batch * self.batch_size:])

    def __len__(self) -> int:
        return max(0, self.per_process - self.start_batch * self.batch_size)


class ShardSampler(Sampler[int]):
    """Every size-th index from this process's rank, in order: the processes' shards together
    cover the validation set exactly once (no padding, unlike DistributedSampler)."""

    def __init__(self, n: int, world: World):
        self.indices = list(range(world.rank, n, world.size))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def on_main_process(world: World, device: torch.device, step: Callable[[], T]) -> T | None:
    """Run ``step`` on the main process only (a check, a claim); if it raises a UserError there, every
    process raises one, so none of them waits forever in the next collective."""
    error, result = None, None
    if world.is_main:
        try:
            result = step()
        except UserError as raised:
            error = raised
    if world.distributed and sum_across([float(error is not None)], world, device)[0] > 0 and error is None:
        raise UserError("the main process stopped with an error (its message is above)")
    if error is not None:
        raise error
    return result
