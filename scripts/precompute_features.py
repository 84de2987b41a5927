"""Compute the frozen encoders' outputs (SAM image embeddings, CLIP patch features) of every
training image once, into a memory-mapped feature cache that training reads with
``data.feature_cache=DIR``: later epochs (and later runs with the same encoders) skip the SAM
ViT-H forward entirely.

    python scripts/precompute_features.py --config configs/finetune/grefcoco_vicuna7b.yaml --out /data/cache/gsva7b
    torchrun --nproc_per_node 8 scripts/precompute_features.py --config ... --out ...   # one shard per GPU
    deepspeed train.py --config configs/finetune/grefcoco_vicuna7b.yaml data.feature_cache=/data/cache/gsva7b

The cache is tied to the encoders' weights and the preprocessing (a fingerprint in its
manifest.json): training refuses a cache made for other weights. Running this again adds only
the images that are missing, so an interrupted run simply resumes.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from gsva.config import load_config
from gsva.distributed import barrier, gather_objects, is_main
from gsva.engine.distributed import init_distributed
from gsva.engine.precompute import precompute_features
from gsva.demo.prepare import prepare_demo
from gsva.pipeline import build_pipeline


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="the training config whose datasets and encoders are cached")
    parser.add_argument("--out", type=Path, required=True, help="cache directory (created; extended when it exists)")
    parser.add_argument("--batch-size", type=int, default=8, help="images per encoder call on each device (default 8)")
    parser.add_argument("--num-workers", type=int, default=4, help="DataLoader workers per device (default 4)")
    parser.add_argument("--local_rank", type=int, default=None, help="set by the deepspeed launcher; do not pass by hand")
    parser.add_argument("overrides", nargs="*", help="config overrides such as data.dataset_dir=/data/gsva")
    args = parser.parse_args(argv)
    if args.batch_size < 1 or args.num_workers < 0:
        parser.error("--batch-size must be >= 1 and --num-workers >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    device = init_distributed()
    cfg = prepare_demo(load_config(args.config, args.overrides))
    pipeline = build_pipeline(cfg)
    pipeline.model.to(device).eval()
    report = precompute_features(pipeline.model, pipeline.builder, cfg, args.out, device, args.batch_size, args.num_workers)
    reports = gather_objects([report])
    barrier()
    if is_main():
        summary = {
            "cache": str(args.out),
            "images": sum(r.images for r in reports),
            "encoded": sum(r.encoded for r in reports),
            "already_cached": sum(r.already_cached for r in reports),
            "seconds": round(max(r.seconds for r in reports), 1),
            "images_per_second_per_rank": [round(r.images_per_second, 2) for r in reports],
        }
        print(json.dumps(summary, indent=2))
        print(f"train with: data.feature_cache={args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
