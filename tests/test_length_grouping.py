"""Length-grouped full passes (``data.group_by_length``): every image once per epoch, exact resume,
less padding per micro-batch, and the length hints of the referring datasets."""

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from gsva.config import ConfigError, load_config
from gsva.data.mixture import FullPassSampler, FullPassStream
from gsva.data.refer_seg.dataset import ReferSegDataset
from gsva.data.sample_builder import SampleBuilder
from gsva.data.samples import Collator
from gsva.engine.trainer import training_sampler, training_stream
from tests.conftest import REPO, tiny_config

POSITIONS, MICRO_BATCH, WORLD = 2000, 8, 2


def random_lengths(seed: int = 0) -> list[float]:
    rng = random.Random(seed)
    return [rng.uniform(10, 200) for _ in range(POSITIONS)]


def sampler(rank: int, lengths: list[float] | None, start_micro_step: int = 0, seed: int = 0) -> FullPassSampler:
    return FullPassSampler(POSITIONS, MICRO_BATCH, rank, WORLD, seed, start_micro_step, lengths)


def first_batches(keys: FullPassSampler, count: int) -> list[list[tuple[int, int]]]:
    batches = iter(keys)
    return [next(batches) for _ in range(count)]


def test_grouped_epochs_visit_the_positions_of_the_plain_order_once_per_rank():
    lengths = random_lengths()
    for epoch in range(2):
        seen: list[set[int]] = []
        for rank in range(WORLD):
            grouped, plain = sampler(rank, lengths), sampler(rank, None)
            assert grouped.batches_per_epoch == plain.batches_per_epoch == 125
            batches = grouped.epoch_batches(epoch)
            assert len(batches) == 125 and all(len(batch) == MICRO_BATCH for batch in batches)
            positions = [position for batch in batches for position in batch]
            assert len(set(positions)) == len(positions)
            assert set(positions) == {position for batch in plain.epoch_batches(epoch) for position in batch}
            seen.append(set(positions))
        assert not seen[0] & seen[1]


def padding(batches: list[list[int]], lengths: list[float]) -> float:
    """Mean over micro-batches of (longest - mean length)."""
    return float(np.mean([max(lengths[p] for p in batch) - np.mean([lengths[p] for p in batch]) for batch in batches]))


def test_grouping_cuts_the_padding_of_random_lengths():
    lengths = random_lengths()
    grouped = padding(sampler(0, lengths).epoch_batches(0), lengths)
    plain = padding(sampler(0, None).epoch_batches(0), lengths)
    assert grouped < 0.3 * plain


@pytest.mark.parametrize("start", [1, 63, 64, 124, 125, 200])
def test_grouped_resume_continues_the_fresh_order(start: int):
    lengths = random_lengths()
    fresh = first_batches(sampler(1, lengths), 300)
    assert first_batches(sampler(1, lengths, start), 300 - start) == fresh[start:]


def test_grouped_order_is_deterministic_and_reshuffled_each_epoch():
    lengths = random_lengths()
    first = sampler(0, lengths).epoch_batches(0)
    assert sampler(0, lengths).epoch_batches(0) == first
    assert sampler(0, lengths).epoch_batches(1) != first
    assert sampler(0, lengths, seed=1).epoch_batches(0) != first


def test_lengths_must_cover_every_position():
    with pytest.raises(ValueError, match="length hints"):
        sampler(0, random_lengths()[:-1])


@dataclass
class PlainDataset:
    """A dataset without length hints; samples are (name, item)."""

    name: str
    task: str
    size: int

    def __len__(self) -> int:
        return self.size

    def sample(self, item: int, rng: random.Random) -> tuple[str, int]:
        return (self.name, item)


class HintedDataset(PlainDataset):
    def length_hint(self, item: int) -> float:
        return 10.0 + item


def test_stream_hints_come_from_the_datasets_or_are_zero():
    stream = FullPassStream([HintedDataset("a", "refer_seg", 3), PlainDataset("b", "vqa", 2)], seed=0)
    assert [stream.length_hint(position) for position in range(5)] == [10.0, 11.0, 12.0, 0.0, 0.0]


def test_group_by_length_needs_epochs_mode():
    with pytest.raises(ConfigError, match=r"data\.group_by_length.*schedule\.mode"):
        load_config(REPO / "configs" / "tiny_synthetic.yaml", ["data.group_by_length=true"])
    assert load_config(REPO / "configs" / "finetune" / "grefcoco_vicuna7b.yaml").data.group_by_length


@pytest.fixture(scope="module")
def builder(tiny_pipeline) -> SampleBuilder:
    """The sample builder of the tiny config."""
    return tiny_pipeline.builder


def test_refer_seg_hint_grows_with_the_number_and_length_of_expressions(synthetic_root: Path, tokenizer_dir: Path, builder):
    cfg = tiny_config(synthetic_root, tokenizer_dir, "schedule.mode=epochs")
    (dataset,) = training_stream(cfg, builder).datasets
    assert isinstance(dataset, ReferSegDataset)
    shape = []
    for item in range(len(dataset)):
        texts = [e.text for e in dataset.index.expressions(dataset.image_ids[item], dataset.split)]
        shape.append((min(len(texts), cfg.data.num_classes_per_sample), sum(map(len, texts)) / len(texts)))
    hints = [dataset.length_hint(item) for item in range(len(dataset))]
    for a in range(len(dataset)):
        for b in range(len(dataset)):
            if shape[a][0] >= shape[b][0] and shape[a][1] > shape[b][1]:
                assert hints[a] > hints[b]
    tokens = [len(dataset.sample(item, random.Random(item)).conversations[0].input_ids) for item in range(len(dataset))]
    assert np.corrcoef(hints, tokens)[0, 1] > 0.6


def padding_tokens(synthetic_root: Path, tokenizer_dir: Path, builder: SampleBuilder, *overrides: str) -> int:
    """Padding tokens of the first 15 collated micro-batches of 4 of the tiny config in epochs mode."""
    cfg = tiny_config(synthetic_root, tokenizer_dir, "schedule.mode=epochs", "optim.micro_batch_size=4", *overrides)
    stream = training_stream(cfg, builder)
    collate = Collator(builder.pad_token_id, cfg.data.sam_image_size)
    batches = iter(training_sampler(stream, cfg, 0))
    return sum(int((collate([stream[key] for key in next(batches)]).attention_mask == 0).sum()) for _ in range(15))


def test_grouped_training_batches_carry_less_padding(synthetic_root: Path, tokenizer_dir: Path, builder):
    grouped = padding_tokens(synthetic_root, tokenizer_dir, builder, "data.group_by_length=true")
    plain = padding_tokens(synthetic_root, tokenizer_dir, builder)
    assert grouped < plain
