"""Write the synthetic coloured-shapes dataset in the gRefCOCO layout and print its statistics."""

from __future__ import annotations

import argparse
from pathlib import Path

from gsva.data.refer_seg.reader import EXPRESSION_KINDS, images_dir, instances_path, refs_path
from gsva.demo.synthetic import (
    DATASET_NAME,
    SEGMENTATION_FORMATS,
    SPLIT_BY,
    SyntheticSpec,
    attributes_path,
    write_synthetic_grefcoco,
)


def parse_args() -> argparse.Namespace:
    defaults = SyntheticSpec()
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("data/synthetic"), help="dataset root to write into")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="random seed of the whole dataset")
    parser.add_argument(
        "--image-size", type=int, default=defaults.image_size, help="side of the square images in pixels"
    )
    parser.add_argument(
        "--train-images", type=int, default=defaults.num_images["train"], help="number of train images"
    )
    parser.add_argument("--val-images", type=int, default=defaults.num_images["val"], help="number of val images")
    parser.add_argument(
        "--test-images",
        type=int,
        default=defaults.num_images["testA"],
        help="number of images in each of the testA and testB splits",
    )
    parser.add_argument(
        "--segmentation-format",
        choices=SEGMENTATION_FORMATS,
        default=defaults.segmentation_format,
        help="'polygon' for polygon annotations only; 'mixed' cycles polygon, compressed and uncompressed RLE",
    )
    return parser.parse_args()


def format_stats(stats: dict[str, dict]) -> str:
    """One row per split: image, object and expression counts, with each kind's share of expressions."""
    header = ["split", "images", "objects", "expressions", *EXPRESSION_KINDS]
    rows = [header]
    for split, split_stats in stats.items():
        counts = split_stats["expressions"]
        total = sum(counts.values())
        shares = [
            f"{counts[kind]} ({100.0 * counts[kind] / total:.1f}%)" if total else "0" for kind in EXPRESSION_KINDS
        ]
        rows.append([split, str(split_stats["images"]), str(split_stats["objects"]), str(total), *shares])
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    return "\n".join("  ".join(cell.rjust(width) for cell, width in zip(row, widths)) for row in rows)


def main() -> None:
    args = parse_args()
    spec = SyntheticSpec(
        seed=args.seed,
        image_size=args.image_size,
        num_images={
            "train": args.train_images,
            "val": args.val_images,
            "testA": args.test_images,
            "testB": args.test_images,
        },
        segmentation_format=args.segmentation_format,
    )
    stats = write_synthetic_grefcoco(args.out, spec)
    print(format_stats(stats))
    print("written:")
    for path in (
        refs_path(args.out, DATASET_NAME, SPLIT_BY),
        instances_path(args.out, DATASET_NAME),
        attributes_path(args.out),
        images_dir(args.out),
    ):
        print(f"  {path}")


if __name__ == "__main__":
    main()
