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
  shards each epoch's order across ranks and drops the ragged end. Given a length hint per
  position (``data.group_by_length``), it sorts each window of ``LENGTH_GROUP_BATCHES``
  micro-batches of a rank by length and shuffles the resulting micro-batches within the window,
  so that a micro-batch holds prompts of similar length (less padding) and the order stays a pure
  function of (seed, epoch).

Redraws (``data.all_rejected: redraw``): a dataset raises ``RedrawSample`` when its draw must not
be trained on (a referring draw of only no-target expressions) and the stream draws again with the
same rng, as the authors' released code does (data/refer_seg_dataset.py:280-281 of the release):
the mixture draws a dataset of the same task uniformly, then an image; a full pass takes the
dataset's first image (their ``__getitem__(0)`` without sampling), drawn anew.

Bad samples (``on_bad_sample``, ``data.on_bad_sample`` in the config): with ``"error"`` a
``BadSampleError`` of a dataset stops training, naming the file; with ``"skip"`` the stream draws a
replacement, attempt a = 1, 2, … seeded from the key and a (another draw of the mixture, or
another position of the epoch), up to ``MAX_SAMPLE_ATTEMPTS`` in all, and lists what it skipped in
the first conversation's ``metadata["skipped"]``. A replacement is a function of the key too, so
resuming stays exact.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Callable, Iterator
from typing import Protocol

import torch

from gsva.data.bad_samples import BadSampleError, check_policy
from gsva.data.samples import ImageSample

LENGTH_GROUP_BATCHES = 64
"""Micro-batches per window within which ``FullPassSampler`` groups positions by length."""

MAX_SAMPLE_ATTEMPTS = 8
"""With ``on_bad_sample="skip"``: samples tried per key (the key's own and its replacements)."""

MAX_REDRAWS = 1000
"""Draws in a row that may raise ``RedrawSample`` before the stream gives up."""


class RedrawSample(Exception):
    """Raised by a dataset's ``sample`` for a draw that must be drawn again (see the module docstring)."""


class TrainingDataset(Protocol):
    """What a stream needs of a dataset."""

    name: str
    task: str

    def __len__(self) -> int: ...

    def sample(self, item: int, rng: random.Random) -> ImageSample: ...


Choice = tuple[TrainingDataset, int, random.Random]
"""(dataset, image index, the rng for the sample's own choices)."""

Redraw = Callable[[TrainingDataset, random.Random], tuple[TrainingDataset, int]]
"""Where a stream draws again after a ``RedrawSample`` of a dataset: (dataset, image index)."""


def _check_not_empty(datasets: list[TrainingDataset]) -> None:
    empty = [dataset.name for dataset in datasets if len(dataset) == 0]
    if empty:
        raise ValueError(f"training datasets without any usable image: {empty}; check them with scripts/check_data.py")


def _sample_with_policy(choose: Callable[[int], Choice], on_bad_sample: str, redraw: Redraw) -> ImageSample:
    """The sample of ``choose(0)`` (drawn again where ``redraw`` says while it raises
    ``RedrawSample``); with ``"skip"``, a ``BadSampleError`` moves on to ``choose(1)``,
    ``choose(2)``, … and the sample returned lists the skipped ones in its first conversation's
    ``metadata["skipped"]``."""
    attempts = MAX_SAMPLE_ATTEMPTS if on_bad_sample == "skip" else 1
    skipped: list[dict[str, str]] = []
    for attempt in range(attempts):
        dataset, item, rng = choose(attempt)
        try:
            sample = _sample_redrawing(dataset, item, rng, redraw)
        except BadSampleError as error:
            if on_bad_sample == "error":
                raise
            skipped.append(error.record())
            continue
        if skipped:
            first = sample.conversations[0]
            first.metadata = {**first.metadata, "skipped": skipped}
        return sample
    last = skipped[-1]
    raise RuntimeError(
        f"{attempts} samples drawn in a row were bad (data.on_bad_sample=skip), the last: {last['source']}: "
        f"{last['reason']}; check the data with scripts/check_data.py"
    )


def _sample_redrawing(dataset: TrainingDataset, item: int, rng: random.Random, redraw: Redraw) -> ImageSample:
    """``dataset.sample(item, rng)``, drawn again where ``redraw`` says, with the same ``rng``, while
    it raises ``RedrawSample`` (at most ``MAX_REDRAWS`` times)."""
    for _ in range(MAX_REDRAWS):
        try:
            return dataset.sample(item, rng)
        except RedrawSample:
            dataset, item = redraw(dataset, rng)
    raise RuntimeError(
        f"{MAX_REDRAWS} draws in a row had to be drawn again (data.all_rejected=redraw), the last of "
        f"{dataset.name}: check that its images have expressions with a target"
    )


def _attempt_rng(key: str, attempt: int) -> random.Random:
    """The rng of ``attempt`` at a key: the key's own for attempt 0, one per replacement after."""
    return random.Random(key if attempt == 0 else f"{key}-attempt-{attempt}")


class MixtureStream:
    """Samples of a weighted task mixture, indexed by draw number (see the module docstring)."""

    def __init__(
        self,
        tasks: dict[str, list[TrainingDataset]],
        weights: dict[str, float],
        seed: int,
        on_bad_sample: str = "error",
    ) -> None:
        check_policy(on_bad_sample)
        if set(tasks) != set(weights):
            raise ValueError(f"tasks {sorted(tasks)} and weights {sorted(weights)} name different tasks")
        for datasets in tasks.values():
            _check_not_empty(datasets)
        self.task_names = sorted(tasks)
        self.tasks = tasks
        self.weights = [float(weights[name]) for name in self.task_names]
        self.seed = seed
        self.on_bad_sample = on_bad_sample

    def choose(self, draw: int, attempt: int = 0) -> Choice:
        """(dataset, image index, the rng for the sample's own choices) of draw number ``draw``;
        ``attempt`` > 0: of its replacement number ``attempt``, a draw of its own."""
        rng = _attempt_rng(f"{self.seed}-draw-{draw}", attempt)
        (task,) = rng.choices(self.task_names, weights=self.weights)
        dataset = rng.choice(self.tasks[task])
        return dataset, rng.randrange(len(dataset)), rng

    def __getitem__(self, draw: int) -> ImageSample:
        return _sample_with_policy(lambda attempt: self.choose(draw, attempt), self.on_bad_sample, self.redraw)

    def redraw(self, dataset: TrainingDataset, rng: random.Random) -> tuple[TrainingDataset, int]:
        """Another draw of ``dataset``'s task: one of its datasets uniformly, then an image."""
        (task,) = [name for name in self.task_names if any(other is dataset for other in self.tasks[name])]
        other = rng.choice(self.tasks[task])
        return other, rng.randrange(len(other))


class FullPassStream:
    """Every image of every dataset once per epoch; keys are (epoch, position)."""

    def __init__(self, datasets: list[TrainingDataset], seed: int, on_bad_sample: str = "error") -> None:
        check_policy(on_bad_sample)
        _check_not_empty(datasets)
        self.datasets = datasets
        self.offsets = [0]
        for dataset in datasets:
            self.offsets.append(self.offsets[-1] + len(dataset))
        self.seed = seed
        self.on_bad_sample = on_bad_sample

    def __len__(self) -> int:
        return self.offsets[-1]

    def __getitem__(self, key: tuple[int, int]) -> ImageSample:
        return _sample_with_policy(lambda attempt: self.choose(key, attempt), self.on_bad_sample, self.redraw)

    @staticmethod
    def redraw(dataset: TrainingDataset, rng: random.Random) -> tuple[TrainingDataset, int]:
        """The first image of ``dataset`` (``rng`` draws its sample anew)."""
        return dataset, 0

    def choose(self, key: tuple[int, int], attempt: int = 0) -> Choice:
        """(dataset, image index, the rng for the sample's own choices) of ``key`` = (epoch,
        position); ``attempt`` > 0: of its replacement number ``attempt``, a position drawn at random."""
        epoch, position = key
        rng = _attempt_rng(f"{self.seed}-epoch-{epoch}-{position}", attempt)
        dataset, item = self._locate(position if attempt == 0 else rng.randrange(len(self)))
        return dataset, item, rng

    def length_hint(self, position: int) -> float:
        """The expected prompt size of ``position``'s samples from its dataset's ``length_hint``;
        0.0 for a dataset without one."""
        dataset, item = self._locate(position)
        hint = getattr(dataset, "length_hint", None)
        return 0.0 if hint is None else float(hint(item))

    def _locate(self, position: int) -> tuple[TrainingDataset, int]:
        """(dataset, image index) of ``position`` in the concatenation of the datasets."""
        which = bisect.bisect_right(self.offsets, position) - 1
        return self.datasets[which], position - self.offsets[which]


class MixtureSampler:
    """Endless micro-batches of draw numbers for one rank, starting at ``start_micro_step``."""

    def __init__(self, micro_batch_size: int, rank: int, world_size: int, start_micro_step: int = 0) -> None:
        self.micro_batch_size = micro_batch_size
        self.rank = rank
        self.world_size = world_size
        self.start_micro_step = start_micro_step

    def starting_at(self, micro_step: int) -> "MixtureSampler":
        """The same sampler, continuing from ``micro_step`` (a resumed run)."""
        return MixtureSampler(self.micro_batch_size, self.rank, self.world_size, micro_step)

    def __iter__(self) -> Iterator[list[int]]:
        step = self.start_micro_step
        while True:
            first = (step * self.world_size + self.rank) * self.micro_batch_size
            yield list(range(first, first + self.micro_batch_size))
            step += 1


class FullPassSampler:
    """Endless micro-batches of (epoch, position) keys for one rank, from ``start_micro_step``;
    grouped by length when ``lengths`` gives a length hint per position."""

    def __init__(
        self,
        length: int,
        micro_batch_size: int,
        rank: int,
        world_size: int,
        seed: int,
        start_micro_step: int = 0,
        lengths: list[float] | None = None,
    ) -> None:
        if lengths is not None and len(lengths) != length:
            raise ValueError(f"{len(lengths)} length hints for {length} training images; expected one per image")
        self.length = length
        self.lengths = lengths
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

    def starting_at(self, micro_step: int) -> "FullPassSampler":
        """The same sampler (its length hints kept, not recomputed), continuing from ``micro_step``."""
        return FullPassSampler(
            self.length, self.micro_batch_size, self.rank, self.world_size, self.seed, micro_step, self.lengths
        )

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch, skip = divmod(self.start_micro_step, self.batches_per_epoch)
        while True:
            for batch in self.epoch_batches(epoch)[skip:]:
                yield [(epoch, position) for position in batch]
            epoch, skip = epoch + 1, 0

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """This rank's micro-batches of positions in ``epoch``: its share of the epoch's seeded
        order without the ragged end, grouped by length when the sampler has lengths."""
        size = self.micro_batch_size
        order = torch.randperm(self.length, generator=torch.Generator().manual_seed(self.seed * 1000 + epoch))
        mine = order[self.rank :: self.world_size][: self.batches_per_epoch * size].tolist()
        if self.lengths is None:
            return [mine[start : start + size] for start in range(0, len(mine), size)]
        window = LENGTH_GROUP_BATCHES * size
        batches: list[list[int]] = []
        for number, first in enumerate(range(0, len(mine), window)):
            rng = random.Random(f"{self.seed}-epoch-{epoch}-window-{number}")
            batches += _group_by_length(mine[first : first + window], self.lengths, size, rng)
        return batches


def _group_by_length(window: list[int], lengths: list[float], size: int, rng: random.Random) -> list[list[int]]:
    """``window`` (a whole number of micro-batches of ``size``) sorted by ``lengths`` (stable), cut
    into micro-batches, which ``rng`` shuffles."""
    ranked = sorted(window, key=lengths.__getitem__)
    batches = [ranked[start : start + size] for start in range(0, len(ranked), size)]
    rng.shuffle(batches)
    return batches
