"""Evaluate one benchmark end to end and report: metrics table on stdout, ``metrics.json``,
``records.jsonl``, overlays and TensorBoard scalars (rank 0 writes)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch.utils.tensorboard import SummaryWriter

from gsva.data.sample_builder import SampleBuilder
from gsva.engine.benchmarks import TABLE_COLUMNS, Benchmark, headline, open_benchmark, summarize
from gsva.engine.distributed import is_main
from gsva.engine.evaluator import EvalSettings, run_evaluation, write_json_atomic, write_records
from gsva.metrics import EXPRESSION_KINDS, format_metrics_table
from gsva.model.gsva import GsvaModel


def print_summary(summary: dict[str, Any], protocol: str, variant: str) -> None:
    """The metrics table of one benchmark (GRES: with the trivial baselines and per kind)."""
    family = summary["family"]
    rows = {f"GSVA ({protocol})": headline(summary, variant)}
    for name, metrics in summary.get("baselines", {}).items():
        label = "baseline: always [REJ]" if name == "always_rej" else "baseline: always [SEG], union of all objects"
        rows[label] = metrics
    extra = f", metric variant {variant!r}" if family == "gres" else ""
    print(f"\n{summary['benchmark']}: {summary['num_records']} expressions{extra}")
    print(format_metrics_table(rows, TABLE_COLUMNS[family]))
    if family == "gres":
        metrics = headline(summary, variant)
        print("by kind: " + ", ".join(
            f"{kind} gIoU {100 * (metrics[f'{kind}/giou'] or 0):.2f} ({metrics[f'{kind}/count']})" for kind in EXPRESSION_KINDS
        ))
    if protocol == "generate":
        print(f"answers whose slots did not line up with the expressions: {summary['parse_failures']} slot(s)")


def evaluate_benchmark(
    model: GsvaModel,
    builder: SampleBuilder,
    benchmark: Benchmark,
    dataset_root: str | Path,
    settings: EvalSettings,
    device: torch.device,
    variant: str = "gres",
    prompt_style: str = "gsva",
    one_per_prompt: bool = False,
    writer: SummaryWriter | None = None,
    step: int = 0,
) -> dict[str, Any] | None:
    """Score ``benchmark``; rank 0 prints and writes the report and returns it (others: None)."""
    dataset = open_benchmark(benchmark, dataset_root, builder, prompt_style, one_per_prompt)
    records = run_evaluation(model, dataset, settings, device, builder.tokenizer)
    if not is_main():
        return None
    summary = summarize(benchmark.family, records)
    summary.update(
        benchmark=benchmark.name,
        protocol=settings.protocol,
        prompt_style=prompt_style,
        one_expression_per_prompt=getattr(dataset, "one_per_prompt", False),
        question=dataset.builder.prompts.eval_question,
        settings=asdict(settings),
    )
    print_summary(summary, settings.protocol, variant)
    if settings.output_dir is not None:
        output = Path(settings.output_dir)
        write_records(output / "records.jsonl", records)
        write_json_atomic(output / "metrics.json", summary)
        overlays = f" and overlays in {output / 'overlays'}" if settings.visualize else ""
        print(f"wrote {output / 'metrics.json'}, {output / 'records.jsonl'}{overlays}")
    if writer is not None:
        for key, value in headline(summary, variant).items():
            if key in TABLE_COLUMNS[benchmark.family] and value is not None:
                writer.add_scalar(f"eval_{benchmark.name}/{key}", value, step)
        writer.flush()
    return summary
