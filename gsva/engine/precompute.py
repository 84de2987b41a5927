"""Fill a feature cache with the frozen encoders' outputs of every training image.

Each rank of ``W`` takes every W-th image of the config's training datasets (all tasks, one full
pass), builds its samples as training does (same resizing, so the same cache keys), runs SAM's
image encoder and the CLIP tower on the images the cache does not hold yet, and publishes them
as shards named after its rank. Running it again only adds what is missing (an interrupted run
resumes; new datasets extend the cache). Training then reads the cache via ``data.feature_cache``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from gsva.batch import GsvaBatch
from gsva.config import Config
from gsva.data.mixture import FullPassStream
from gsva.data.catalog import dataset_entry
from gsva.data.sample_builder import SampleBuilder
from gsva.data.samples import Collator, ImageSample
from gsva.distributed import is_main, rank, world_size
from gsva.feature_cache import MANIFEST_NAME, FeatureCache, FeatureCacheWriter, FeatureLayout, image_key
from gsva.model.encoder_features import encode_features, encoder_layout
from gsva.model.gsva import GsvaModel


@dataclass
class PrecomputeReport:
    images: int
    """Images this rank looked at."""
    encoded: int
    """Images whose features this rank computed and stored."""
    already_cached: int
    seconds: float

    @property
    def images_per_second(self) -> float:
        return self.encoded / self.seconds if self.seconds > 0 else 0.0


class _RankImages(Dataset):
    """Image ``position`` (of this rank's share) of one full pass: (cache key, sample)."""

    def __init__(self, stream: FullPassStream, positions: list[int]) -> None:
        self.stream = stream
        self.positions = positions

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, index: int) -> tuple[str, ImageSample]:
        sample = self.stream[(0, self.positions[index])]
        return image_key(sample.sam_image, sample.clip_image), sample


@dataclass(frozen=True)
class _KeyedCollator:
    collate: Collator

    def __call__(self, items: list[tuple[str, ImageSample]]) -> tuple[list[str], GsvaBatch]:
        return [key for key, _ in items], self.collate([sample for _, sample in items])


def all_training_images(cfg: Config, builder: SampleBuilder) -> FullPassStream:
    """One full pass over every dataset of every task of ``cfg.data.tasks``."""
    datasets = [
        dataset_entry(name).open_training(cfg.data.dataset_dir, cfg.data.train_split, builder)
        for spec in cfg.data.tasks.values()
        for name in spec.datasets
    ]
    return FullPassStream(datasets, cfg.run.seed)


def precompute_features(
    model: GsvaModel,
    builder: SampleBuilder,
    cfg: Config,
    out_dir: Path,
    device: torch.device,
    batch_size: int,
    num_workers: int,
) -> PrecomputeReport:
    """Encode this rank's share of the training images into the cache at ``out_dir``."""
    start = time.perf_counter()
    layout = encoder_layout(model, cfg.data.clip_image_size)
    stream = all_training_images(cfg, builder)
    positions = list(range(rank(), len(stream), world_size()))
    loader = DataLoader(
        _RankImages(stream, positions),
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=_KeyedCollator(Collator(builder.pad_token_id, cfg.data.sam_image_size)),
        pin_memory=device.type == "cuda",
    )
    known = _cached_keys(out_dir, layout)
    encoded = already = 0
    with FeatureCacheWriter(out_dir, layout, f"rank{rank()}") as writer:
        for keys, batch in tqdm(loader, desc=f"encode (rank {rank()})", disable=not is_main()):
            missing = [index for index, key in enumerate(keys) if key not in known]
            already += len(keys) - len(missing)
            if not missing:
                continue
            sam, clip = encode_features(model, batch.to(device))
            for index in missing:
                writer.add(keys[index], sam[index], clip[index])
                known.add(keys[index])
            encoded += len(missing)
    return PrecomputeReport(len(positions), encoded, already, time.perf_counter() - start)


def _cached_keys(out_dir: Path, layout: FeatureLayout) -> set[str]:
    """Keys already in the cache at ``out_dir`` (none when it does not exist yet)."""
    if not (out_dir / MANIFEST_NAME).is_file():
        return set()
    cache = FeatureCache.open(out_dir)
    cache.check_layout(layout)
    return cache.keys()
