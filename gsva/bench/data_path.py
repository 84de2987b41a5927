"""Measure the data path: training samples/s and validation images/s, optionally beside the
authors' data path on the same fixture, in the same run.

Training: referring samples of up to 5 expressions (dataset + collate into micro-batches of 2),
through the same mixture stream and sampler as train.py. Validation: evaluation samples (every
expression of an image), batch 1 (as the authors' evaluation) and batch 8. Workers only decode,
resize (pixel-identical to the authors' PIL resizes) and tokenise: normalisation and padding run on
the device in this project, so their CPU cost is reported beside, not inside, the figures.

    python scripts/bench_data.py                                  # writes a 640x640 synthetic fixture
    python scripts/bench_data.py --fixture F                      # a gRefCOCO folder with tokenizer/
    python scripts/bench_data.py --fixture F --official-dir D --official-harness H   # side by side

``--fixture`` takes a folder in the gRefCOCO layout with a ``tokenizer/`` folder beside
``refer_seg/``, as the authors' benchmark harness writes it (``make_fixture.py``). With
``--official-dir`` (an extracted copy of the authors' code) and ``--official-harness`` (the folder of
their harness's ``bench_data.py``), their data path is timed right after ours on the same fixture,
samples and thread count, and the ratios are printed. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from gsva.text.conversation import get_template
from gsva.bench.authors import AuthorsHarness, add_arguments
from gsva.data.mixture import MixtureSampler, MixtureStream
from gsva.text.prompts import PromptSettings
from gsva.data.refer_seg.reader import ReferIndex
from gsva.data.refer_seg.dataset import ReferSegDataset
from gsva.data.sample_builder import SampleBuilder, SampleSettings
from gsva.data.samples import Collator
from gsva.demo.synthetic import DATASET_NAME, SyntheticSpec, synthetic_dataset_exists, write_synthetic_grefcoco
from gsva.text.tokenizer import add_task_tokens, load_tokenizer, task_token_strings, train_tiny_bpe
from gsva.demo.components import tokenizer_corpus
from gsva.model.pixels import normalize_clip_images, normalize_sam_images

MICRO_BATCH = 2
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
    parser.add_argument("--work-dir", type=Path, default=Path("runs/bench_data"),
                        help="where the synthetic fixture and its tokenizer are written and reused (without --fixture)")
    parser.add_argument("--fixture", type=Path, default=None,
                        help="an existing gRefCOCO-format folder (refer_seg/grefcoco/...) with its tokenizer in <fixture>/tokenizer")
    parser.add_argument("--train-samples", type=int, default=32, help="training samples timed per pass")
    parser.add_argument("--passes", type=int, default=5, help="timed passes; the median is reported")
    parser.add_argument("--workers", type=int, default=0,
                        help="DataLoader workers (0 = in the timing process, as the authors' benchmark)")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads for both sides")
    parser.add_argument("--sam-size", type=int, default=1024, help="SAM input side")
    parser.add_argument("--clip-size", type=int, default=224, help="CLIP input side")
    add_arguments(parser)
    args = parser.parse_args()
    args.authors = AuthorsHarness.from_args(args, parser)
    if args.authors is not None and args.fixture is None:
        parser.error("--official-dir needs --fixture: both sides must read the same files")
    return args


def build_sample_builder(args: argparse.Namespace) -> tuple[SampleBuilder, Path]:
    """The sample builder (tokenizer with the task tokens, <im_start>/<im_end> as the released
    model) and the dataset root."""
    if args.fixture is not None:
        tokenizer = load_tokenizer(args.fixture / "tokenizer", 1024)
        root = args.fixture
    else:
        root = args.work_dir / "grefcoco_640"
        if not synthetic_dataset_exists(root, FIXTURE):
            write_synthetic_grefcoco(root, FIXTURE)
        tokenizer = train_tiny_bpe(tokenizer_corpus(list(FIXTURE.colours), "llava_v1"), 2000, args.work_dir / "tokenizer")
    tokens = task_token_strings("shared", 0, use_rej_token=True, use_im_start_end=True)
    add_task_tokens(tokenizer, tokens)
    prompts = PromptSettings(template=get_template("llava_v1"), seg_tokens=tokens[:1], use_im_start_end=True)
    settings = SampleSettings(sam_image_size=args.sam_size, clip_image_size=args.clip_size, num_classes_per_sample=5)
    return SampleBuilder(tokenizer, prompts, settings), root


def seconds_per_item(loader_factory, count_items, passes: int) -> tuple[float, list]:
    """Median over ``passes`` (after one warm-up pass) of seconds per item; the last pass's batches."""
    timings, batches = [], []
    for number in range(passes + 1):
        start = time.perf_counter()
        batches = list(loader_factory(number))
        if number > 0:
            timings.append((time.perf_counter() - start) / count_items(batches))
    return statistics.median(timings), batches


def measure_ours(args: argparse.Namespace) -> dict:
    builder, root = build_sample_builder(args)
    index = ReferIndex(root, DATASET_NAME)
    collate = Collator(builder.pad_token_id, args.sam_size)
    workers = {"num_workers": args.workers, "persistent_workers": False, "prefetch_factor": 4 if args.workers else None}

    train_set = ReferSegDataset(index, "train", builder, train=True)

    def train_loader(number: int):
        stream = MixtureStream({"refer_seg": [train_set]}, {"refer_seg": 1.0}, seed=number)
        loader = DataLoader(stream, batch_sampler=MixtureSampler(MICRO_BATCH, 0, 1), collate_fn=collate, **workers)
        batches = iter(loader)
        return [next(batches) for _ in range(args.train_samples // MICRO_BATCH)]

    train_s, batches = seconds_per_item(train_loader, lambda got: sum(batch.num_images for batch in got), args.passes)
    expressions = [len(meta["expressions"]) for batch in batches for meta in batch.metadata]

    val_set = ReferSegDataset(index, "val", builder, train=False)
    val_rates = {}
    for batch_size in (1, 8):
        def val_loader(number: int, batch_size=batch_size):
            return DataLoader(val_set, batch_size=batch_size, collate_fn=collate, **workers)

        val_s, _ = seconds_per_item(val_loader, lambda got: sum(batch.num_images for batch in got), args.passes)
        val_rates[batch_size] = 1 / val_s

    sample_batch = batches[0]
    start = time.perf_counter()
    for _ in range(10):
        normalize_sam_images(sample_batch.sam_images, sample_batch.resized_sizes)
        normalize_clip_images(sample_batch.clip_images)
    normalise_ms = (time.perf_counter() - start) / 10 / sample_batch.num_images * 1000
    return {
        "train_samples_per_s": round(1 / train_s, 2),
        "train_ms_per_sample": round(train_s * 1000, 2),
        "train_mean_expressions_per_sample": round(sum(expressions) / len(expressions), 2),
        "val_images_per_s_batch1": round(val_rates[1], 2),
        "val_images_per_s_batch8": round(val_rates[8], 2),
        "val_images": len(val_set),
        "device_side_normalise_pad_cpu_ms_per_image": round(normalise_ms, 2),
    }


def measure_authors(args: argparse.Namespace) -> dict:
    """The authors' data benchmark on the same fixture, samples, passes and threads."""
    measured = args.authors.run("bench_data.py", [
        "--fixture", str(args.fixture), "--train-samples", str(args.train_samples), "--passes", str(args.passes),
        "--threads", str(args.threads), "--image-size", str(args.sam_size),
    ])
    return {
        "train_samples_per_s": measured["train_loader_samples_per_s"],
        "val_images_per_s_batch1": measured["val_loader_images_per_s"],
        "command": measured["command"],
    }


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    random.seed(0)
    report = {
        "fixture": str(args.fixture) if args.fixture else f"synthetic {FIXTURE.image_size}x{FIXTURE.image_size} JPEGs",
        "threads": args.threads,
        "workers": args.workers,
        "micro_batch_size": MICRO_BATCH,
        "ours": measure_ours(args),
    }
    if args.authors is not None:
        authors = measure_authors(args)
        report["authors"] = authors
        report["ratio"] = {
            key: round(report["ours"][key] / authors[key], 2) for key in ("train_samples_per_s", "val_images_per_s_batch1")
        }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
