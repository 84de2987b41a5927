"""Measure the data path: training samples/s and validation images/s with one DataLoader worker.

Writes (once) a gRefCOCO-format fixture of COCO-sized JPEGs (640x640 coloured shapes, polygon
annotations, 5-9 objects and about 6-8 expressions per image), then times

- training: referring samples of up to 5 expressions (dataset + collate into micro-batches of 2),
  through the same mixture stream and sampler as train.py;
- validation: evaluation samples (every expression of an image) collated in batches of 8.

Prints one JSON object. Normalisation and padding of the SAM/CLIP inputs run on the device in
this project, so they are not part of the worker's time; their CPU cost is reported beside.

    python scripts/bench_data.py --work-dir /tmp/gsva_bench_data
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from gsva.data.conversation import get_template
from gsva.data.mixture import MixtureSampler, MixtureStream
from gsva.data.prompts import PromptSettings
from gsva.data.refer import ReferIndex
from gsva.data.refer_seg_dataset import ReferSegDataset
from gsva.data.sample_builder import SampleBuilder, SampleSettings
from gsva.data.samples import Collator
from gsva.data.synthetic import DATASET_NAME, SyntheticSpec, synthetic_dataset_exists, write_synthetic_grefcoco
from gsva.data.tokenizer import add_task_tokens, train_tiny_bpe
from gsva.engine.components import tokenizer_corpus
from gsva.model.pixels import normalize_clip_images, normalize_sam_images
from gsva.special_tokens import REJ_TOKEN, SEG_TOKEN

AUTHORS_TRAIN_SAMPLES_PER_S = 7.2
AUTHORS_VAL_IMAGES_PER_S = 5.6
FIXTURE = SyntheticSpec(
    seed=0,
    image_size=640,
    num_images={"train": 200, "val": 100},
    min_objects=5,
    max_objects=9,
    min_object_size=60,
    max_object_size=160,
    absent_expression_prob=0.9,
    pair_expression_prob=0.9,
)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-dir", type=Path, default=Path("runs/bench_data"), help="where the fixture and tokenizer are written (reused)")
    parser.add_argument("--train-batches", type=int, default=100, help="micro-batches of 2 timed on the training path")
    parser.add_argument("--val-images", type=int, default=100, help="validation images timed")
    parser.add_argument("--workers", type=int, default=1, help="DataLoader workers (the target is per worker)")
    parser.add_argument("--sam-size", type=int, default=1024, help="SAM input side")
    parser.add_argument("--clip-size", type=int, default=224, help="CLIP input side")
    return parser.parse_args()


def build_sample_builder(work_dir: Path, sam_size: int, clip_size: int) -> SampleBuilder:
    tokenizer = train_tiny_bpe(tokenizer_corpus(list(FIXTURE.colours), "llava_v1"), 2000, work_dir / "tokenizer")
    add_task_tokens(tokenizer, [SEG_TOKEN, REJ_TOKEN])
    prompts = PromptSettings(template=get_template("llava_v1"), seg_tokens=[SEG_TOKEN], use_im_start_end=False)
    settings = SampleSettings(sam_image_size=sam_size, clip_image_size=clip_size, num_classes_per_sample=5)
    return SampleBuilder(tokenizer, prompts, settings)


def timed_batches(loader: DataLoader, count: int, warmup: int) -> tuple[float, list]:
    """Seconds for ``count`` batches after ``warmup`` batches (workers started, caches warm)."""
    batches = iter(loader)
    for _ in range(warmup):
        next(batches)
    start = time.perf_counter()
    collected = [next(batches) for _ in range(count)]
    return time.perf_counter() - start, collected


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)
    root = args.work_dir / "grefcoco_640"
    if not synthetic_dataset_exists(root, FIXTURE):
        write_synthetic_grefcoco(root, FIXTURE)
    builder = build_sample_builder(args.work_dir, args.sam_size, args.clip_size)
    index = ReferIndex(root, DATASET_NAME)
    collate = Collator(builder.pad_token_id, args.sam_size)
    micro_batch = 2

    train_set = ReferSegDataset(index, "train", builder, train=True)
    stream = MixtureStream({"refer_seg": [train_set]}, {"refer_seg": 1.0}, seed=0)
    loader = DataLoader(stream, batch_sampler=MixtureSampler(micro_batch, 0, 1), num_workers=args.workers,
                        collate_fn=collate, persistent_workers=args.workers > 0, prefetch_factor=4 if args.workers else None)
    seconds, batches = timed_batches(loader, args.train_batches, warmup=5)
    expressions = [len(meta["expressions"]) for batch in batches for meta in batch.metadata]

    rng = random.Random(0)
    samples, start = [], time.perf_counter()
    for item in range(40):
        samples.append(train_set.sample(item % len(train_set), rng))
    per_sample_ms = (time.perf_counter() - start) / 40 * 1000
    start = time.perf_counter()
    for first in range(0, 40, micro_batch):
        collated = collate(samples[first : first + micro_batch])
    collate_ms = (time.perf_counter() - start) / 20 * 1000
    start = time.perf_counter()
    for _ in range(10):
        normalize_sam_images(collated.sam_images, collated.resized_sizes)
        normalize_clip_images(collated.clip_images)
    normalise_ms = (time.perf_counter() - start) / 10 / micro_batch * 1000

    val_set = ReferSegDataset(index, "val", builder, train=False)
    val_count = min(args.val_images, len(val_set) - 8)
    val_loader = DataLoader(val_set, batch_size=8, num_workers=args.workers, collate_fn=collate,
                            prefetch_factor=4 if args.workers else None)
    val_seconds, val_batches = timed_batches(val_loader, val_count // 8, warmup=1)
    val_images = sum(batch.num_images for batch in val_batches)

    train_rate = len(expressions) / seconds
    val_rate = val_images / val_seconds
    print(json.dumps({
        "fixture": {"image_size": [FIXTURE.image_size, FIXTURE.image_size], "format": "gRefCOCO, polygons, JPEG"},
        "workers": args.workers,
        "train": {
            "samples_per_s": round(train_rate, 1),
            "samples": len(expressions),
            "micro_batch_size": micro_batch,
            "mean_expressions_per_sample": round(sum(expressions) / len(expressions), 2),
            "in_process_ms_per_sample": round(per_sample_ms, 1),
            "in_process_ms_per_collated_batch": round(collate_ms, 1),
            "speedup_vs_authors": round(train_rate / AUTHORS_TRAIN_SAMPLES_PER_S, 2),
        },
        "val": {
            "images_per_s": round(val_rate, 1),
            "images": val_images,
            "batch_size": 8,
            "speedup_vs_authors": round(val_rate / AUTHORS_VAL_IMAGES_PER_S, 2),
        },
        "device_side_normalise_pad_cpu_ms_per_image": round(normalise_ms, 1),
        "authors_reference": {"train_samples_per_s": AUTHORS_TRAIN_SAMPLES_PER_S, "val_images_per_s": AUTHORS_VAL_IMAGES_PER_S},
    }, indent=2))


if __name__ == "__main__":
    main()
