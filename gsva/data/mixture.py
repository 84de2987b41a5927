"""The training streams: a weighted mixture of tasks (pretraining) or full passes (finetuning).

Both are map-style datasets whose KEYS carry all the randomness, so that a stream is a pure
function of (seed, key): no state lives in a worker, ranks and DataLoader workers never draw the
same sample, and resuming at micro-step m reproduces the run exactly.

- ``MixtureStream``: key = global draw number k. Draw k picks a task with probability
  proportional to its weight (9:6:3:1 in the paper), a dataset of that task uniformly, an image of
  that dataset uniformly, and the sample's own choices (targets, phrasing), all from
  ``random.Random(f"{seed}-draw-{k}")``. ``MixtureSampler`` hands rank r of W the draws
  ``(m·W + r)·B … (m·W + r)·B + B − 1`` for micro-step m.
- ``FullPassStream``: key = (epoch, position) over the concatenation of the datasets; every image
  once per epoch in a seeded order (``no_sampling`` in the authors' terms). ``FullPassSampler``
  shards each epoch's order across ranks and drops the ragged end.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Iterator
from typing import Protocol

import torch

from gsva.data.samples import ImageSample


class TrainingDataset(Protocol):
    """What a stream needs of a dataset."""

    name: str
    task: str

    def __len__(self) -> int: ...

    def sample(self, item: int, rng: random.Random) -> ImageSample: ...


def _check_not_empty(datasets: list[TrainingDataset]) -> None:
    empty = [dataset.name for dataset in datasets if len(dataset) == 0]
    if empty:
        raise ValueError(f"training datasets without any usable image: {empty}; check them with scripts/check_data.py")


class MixtureStream:
    """Samples of a weighted task mixture, indexed by draw number (see the module docstring)."""

    def __init__(self, tasks: dict[str, list[TrainingDataset]], weights: dict[str, float], seed: int) -> None:
        if set(tasks) != set(weights):
            raise ValueError(f"tasks {sorted(tasks)} and weights {sorted(weights)} name different tasks")
        for datasets in tasks.values():
            _check_not_empty(datasets)
        self.task_names = sorted(tasks)
        self.tasks = tasks
        self.weights = [float(weights[name]) for name in self.task_names]
        self.seed = seed

    def choose(self, draw: int) -> tuple[TrainingDataset, int, random.Random]:
        """(dataset, image index, the rng for the sample's own choices) of draw number ``draw``."""
        rng = random.Random(f"{self.seed}-draw-{draw}")
        (task,) = rng.choices(self.task_names, weights=self.weights)
        dataset = rng.choice(self.tasks[task])
        return dataset, rng.randrange(len(dataset)), rng

    def __getitem__(self, draw: int) -> ImageSample:
        dataset, item, rng = self.choose(draw)
        return dataset.sample(item, rng)

    def task_shares(self) -> dict[str, float]:
        """Expected share of samples per task."""
        total = sum(self.weights)
        return {name: weight / total for name, weight in zip(self.task_names, self.weights)}


class FullPassStream:
    """Every image of every dataset once per epoch; keys are (epoch, position)."""

    def __init__(self, datasets: list[TrainingDataset], seed: int) -> None:
        _check_not_empty(datasets)
        self.datasets = datasets
        self.offsets = [0]
        for dataset in datasets:
            self.offsets.append(self.offsets[-1] + len(dataset))
        self.seed = seed

    def __len__(self) -> int:
        return self.offsets[-1]

    def __getitem__(self, key: tuple[int, int]) -> ImageSample:
        epoch, position = key
        which = bisect.bisect_right(self.offsets, position) - 1
        rng = random.Random(f"{self.seed}-epoch-{epoch}-{position}")
        return self.datasets[which].sample(position - self.offsets[which], rng)


class MixtureSampler:
    """Endless micro-batches of draw numbers for one rank, starting at ``start_micro_step``."""

    def __init__(self, micro_batch_size: int, rank: int, world_size: int, start_micro_step: int = 0) -> None:
        self.micro_batch_size = micro_batch_size
        self.rank = rank
        self.world_size = world_size
        self.start_micro_step = start_micro_step

    def __iter__(self) -> Iterator[list[int]]:
        step = self.start_micro_step
        while True:
            first = (step * self.world_size + self.rank) * self.micro_batch_size
            yield list(range(first, first + self.micro_batch_size))
            step += 1


class FullPassSampler:
    """Endless micro-batches of (epoch, position) keys for one rank, from ``start_micro_step``."""

    def __init__(self, length: int, micro_batch_size: int, rank: int, world_size: int, seed: int, start_micro_step: int = 0) -> None:
        self.length = length
        self.micro_batch_size = micro_batch_size
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.start_micro_step = start_micro_step
        if self.batches_per_epoch == 0:
            raise ValueError(
                f"{length} training images cannot fill one micro-batch of {micro_batch_size} on each of {world_size} ranks"
            )

    @property
    def batches_per_epoch(self) -> int:
        return (self.length // self.world_size) // self.micro_batch_size

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch, skip = divmod(self.start_micro_step, self.batches_per_epoch)
        size = self.micro_batch_size
        while True:
            order = torch.randperm(self.length, generator=torch.Generator().manual_seed(self.seed * 1000 + epoch))
            mine = order[self.rank :: self.world_size].tolist()
            for batch in range(skip, self.batches_per_epoch):
                yield [(epoch, position) for position in mine[batch * size : (batch + 1) * size]]
            epoch, skip = epoch + 1, 0
