"""Recompute a benchmark's metrics from its per-slot records, offline.

    python scripts/score.py runs/x/final/eval/grefcoco_val_teacher-forced_gsva/records.jsonl
    python scripts/score.py records.jsonl --family res --json

Each line of records.jsonl holds one answer slot (image, expression, kind, decision, the
intersection and union counts, the box IoU, generated text), so every number of metrics.json can
be rebuilt from it. The benchmark family is read from the metrics.json beside the records unless
``--family`` is given.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from gsva.evaluation.evaluator import format_report
from gsva.evaluation.families import FAMILIES
from gsva.evaluation.scores import VARIANTS


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("records", type=Path, help="records.jsonl written by eval.py (or by training's evaluation)")
    parser.add_argument("--family", choices=sorted(FAMILIES), default=None,
                        help="metric family (default: from the metrics.json beside the records)")
    parser.add_argument("--metric-variant", choices=VARIANTS, default="gres", help="GRES definitions to print (both are computed)")
    parser.add_argument("--json", action="store_true", help="print the whole summary as JSON instead of a table")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    if not args.records.is_file():
        print(f"{args.records}: no such records file", file=sys.stderr)
        return 1
    family, benchmark, protocol = args.family, args.records.parent.name, "teacher-forced"
    beside = args.records.parent / "metrics.json"
    if beside.is_file():
        stored = json.loads(beside.read_text())
        family = family or stored["family"]
        benchmark, protocol = stored.get("benchmark", benchmark), stored.get("protocol", protocol)
    if family is None:
        print(f"no metrics.json beside {args.records}: pass --family ({', '.join(sorted(FAMILIES))})", file=sys.stderr)
        return 1
    with args.records.open() as handle:
        records = [json.loads(line) for line in handle if line.strip()]
    summary = FAMILIES[family].summary(records)
    summary["benchmark"] = benchmark
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(format_report(FAMILIES[family], summary, protocol, benchmark, args.metric_variant))
    return 0


if __name__ == "__main__":
    sys.exit(main())
