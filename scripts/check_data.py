"""Check a dataset folder before training: per dataset, what is present, what is missing (the exact
path expected), how many images / expressions / no-target expressions there are, and which files
cannot be read. Exits with status 1 when a requested dataset is missing or has unreadable files.

    python scripts/check_data.py --dataset-dir /data/gsva
    python scripts/check_data.py --dataset-dir /data/gsva --datasets grefcoco refcoco --max-files 200
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from pathlib import Path

from tqdm import tqdm

from gsva.data.catalog import DATASETS, check_dataset
from gsva.data.doctor import DatasetReport
from gsva.atomic import write_json_atomic

SHOWN_PROBLEMS = 10


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset-dir", type=Path, required=True, help="the <dataset_dir> of the LISA/GSVA layout (README, Datasets)")
    parser.add_argument("--datasets", nargs="+", choices=sorted(DATASETS), default=list(DATASETS),
                        help="datasets to check (default: all of them)")
    parser.add_argument("--max-files", type=int, default=None,
                        help="read at most this many images (with their labels) per dataset, spread evenly (default: all)")
    parser.add_argument("--json", type=Path, default=None, help="also write the reports to this JSON file")
    return parser.parse_args(argv)


def print_report(report: DatasetReport) -> None:
    status = "MISSING" if report.missing else ("OK" if report.ok else f"{len(report.unreadable)} UNREADABLE")
    print(f"\n{report.name} ({report.task}): {status}")
    if report.missing:
        print(f"  {report.missing}")
        return
    for key, value in report.counts.items():
        print(f"  {key:<28} {value}")
    print(f"  {'files read':<28} {report.files_checked}")
    for problem in report.unreadable[:SHOWN_PROBLEMS]:
        print(f"  unreadable: {problem}")
    if len(report.unreadable) > SHOWN_PROBLEMS:
        print(f"  ... and {len(report.unreadable) - SHOWN_PROBLEMS} more (see --json)")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.dataset_dir.is_dir():
        print(f"--dataset-dir {args.dataset_dir}: not a folder", file=sys.stderr)
        return 1
    reports = []
    for name in args.datasets:
        report = check_dataset(name, args.dataset_dir, args.max_files, lambda files, name=name: tqdm(files, desc=name, leave=False))
        print_report(report)
        reports.append(report)
    if args.json is not None:
        write_json_atomic(args.json, [asdict(report) for report in reports])
    bad = [report.name for report in reports if not report.ok]
    print(f"\n{len(reports) - len(bad)} of {len(reports)} datasets ready" + (f"; not ready: {', '.join(bad)}" if bad else ""))
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
