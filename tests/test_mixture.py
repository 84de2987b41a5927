"""The training streams: task ratios, seeding across ranks and workers, exact resume, full passes."""

import random
from collections import Counter
from dataclasses import dataclass

import pytest
from torch.utils.data import DataLoader

from gsva.data.mixture import FullPassSampler, FullPassStream, MixtureSampler, MixtureStream


@dataclass
class FakeDataset:
    """Returns (dataset name, item, a number drawn from the sample's rng) instead of an image."""

    name: str
    task: str
    size: int

    def __len__(self) -> int:
        return self.size

    def sample(self, item: int, rng: random.Random):
        return (self.name, item, rng.random())


def paper_mixture(seed: int = 0) -> MixtureStream:
    tasks = {
        "sem_seg": [FakeDataset(f"sem{i}", "sem_seg", 50 + i) for i in range(5)],
        "refer_seg": [FakeDataset(f"ref{i}", "refer_seg", 30 + i) for i in range(5)],
        "vqa": [FakeDataset("vqa", "vqa", 100)],
        "reason_seg": [FakeDataset("reason", "reason_seg", 20)],
    }
    return MixtureStream(tasks, {"sem_seg": 9, "refer_seg": 6, "vqa": 3, "reason_seg": 1}, seed)


def identity(batch):
    return batch


def test_task_ratio_is_9_6_3_1_and_datasets_uniform():
    stream = paper_mixture()
    draws = [stream[k] for k in range(19000)]
    by_task = Counter(name.rstrip("0123456789") for name, _, _ in draws)
    expected = {"sem": 9000, "ref": 6000, "vqa": 3000, "reason": 1000}
    for task, count in expected.items():
        assert abs(by_task[task] - count) < 0.05 * count, (task, by_task[task])
    sem = Counter(name for name, _, _ in draws if name.startswith("sem"))
    assert max(sem.values()) - min(sem.values()) < 0.12 * 1800


def test_draws_are_pure_functions_of_seed_and_key():
    first, again, other = paper_mixture(0), paper_mixture(0), paper_mixture(1)
    assert [first[k] for k in range(200)] == [again[k] for k in range(200)]
    assert [first[k] for k in range(200)] != [other[k] for k in range(200)]
    assert len({first[k] for k in range(200)}) == 200  # the samples' own rngs differ too


def test_ranks_draw_disjoint_keys_and_resume_continues_the_stream():
    world, size = 4, 3
    seen = []
    for rank in range(world):
        batches = iter(MixtureSampler(size, rank, world))
        seen.extend(key for _ in range(10) for key in next(batches))
    assert sorted(seen) == list(range(world * size * 10))
    full = iter(MixtureSampler(size, 2, world))
    expected = [next(full) for _ in range(12)][7:]
    resumed = iter(MixtureSampler(size, 2, world, start_micro_step=7))
    assert [next(resumed) for _ in range(5)] == expected


def test_workers_yield_the_same_stream_as_the_main_process():
    stream = paper_mixture()

    def first_batches(workers: int) -> list:
        loader = DataLoader(stream, batch_sampler=MixtureSampler(4, 1, 2), num_workers=workers, collate_fn=identity)
        batches = iter(loader)
        return [next(batches) for _ in range(6)]

    assert first_batches(2) == first_batches(0)


def test_full_pass_visits_every_image_once_per_epoch_across_ranks():
    datasets = [FakeDataset("a", "refer_seg", 13), FakeDataset("b", "refer_seg", 8)]
    stream = FullPassStream(datasets, seed=0)
    assert len(stream) == 21
    world, size = 2, 2
    per_rank = [FullPassSampler(len(stream), size, rank, world, seed=0) for rank in range(world)]
    assert per_rank[0].batches_per_epoch == 5
    for epoch in range(2):
        keys = []
        for sampler in per_rank:
            batches = iter(sampler)
            epoch_batches = [next(batches) for _ in range(sampler.batches_per_epoch * 2)]
            keys.extend(key for batch in epoch_batches[epoch * 5 : (epoch + 1) * 5] for key in batch)
        assert {e for e, _ in keys} == {epoch}
        positions = [p for _, p in keys]
        assert len(positions) == len(set(positions)) == 20  # one image of 21 left over (ragged end)
    samples = {stream[(0, p)][:2] for p in range(21)}
    assert samples == {("a", i) for i in range(13)} | {("b", i) for i in range(8)}


def test_full_pass_resume_and_epoch_orders():
    sampler = FullPassSampler(40, 2, 0, 1, seed=3)
    batches = iter(sampler)
    stream = [next(batches) for _ in range(50)]
    assert stream[0] != stream[20]  # epoch 1 is reshuffled
    resumed = iter(FullPassSampler(40, 2, 0, 1, seed=3, start_micro_step=27))
    assert [next(resumed) for _ in range(23)] == stream[27:]


def test_empty_datasets_and_tiny_sets_are_reported():
    with pytest.raises(ValueError, match="without any usable image: \\['empty'\\]"):
        MixtureStream({"vqa": [FakeDataset("empty", "vqa", 0)]}, {"vqa": 1}, 0)
    with pytest.raises(ValueError, match="cannot fill one micro-batch"):
        FullPassSampler(3, 2, 0, 2, seed=0)
