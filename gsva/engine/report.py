"""Evaluate one benchmark end to end and report: metrics table on stdout, ``metrics.json``,
``records.jsonl``, overlays and TensorBoard scalars (rank 0 writes, each file atomically).

With an output directory and a weights file (``EvalSettings.weights``), the evaluation is
resumable (``gsva.engine.eval_resume``): restarted after an interruption with the same output
directory, it scores only the images not finished before, and reports the same metrics as an
uninterrupted run.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch.utils.tensorboard import SummaryWriter

from gsva.data.sample_builder import SampleBuilder
from gsva.atomic import write_json_atomic, write_jsonl_atomic
from gsva.engine.benchmarks import TABLE_COLUMNS, Benchmark, headline, open_benchmark, summarize
from gsva.engine.distributed import is_main, rank, world_size
from gsva.engine.eval_resume import PartialRecords, model_layout, remove_partials, weights_identity
from gsva.engine.evaluator import EvalSettings, run_evaluation
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


def evaluation_fingerprint(
    model: GsvaModel, dataset: Any, benchmark: Benchmark, dataset_root: str | Path, settings: EvalSettings, prompt_style: str
) -> dict[str, Any]:
    """What the records of one evaluation depend on: a resumed evaluation must match all of it."""
    return {
        "benchmark": benchmark.name,
        "dataset_root": str(Path(dataset_root).resolve()),
        "num_items": len(dataset),
        "protocol": settings.protocol,
        "max_new_tokens": settings.max_new_tokens,
        "prompt_style": prompt_style,
        "one_expression_per_prompt": getattr(dataset, "one_per_prompt", False),
        "prompts": asdict(dataset.builder.prompts),
        "samples": asdict(dataset.builder.settings),
        "weights": weights_identity(settings.weights),
        "model": model_layout(model),
        "world_size": world_size(),
    }


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
    resumable = settings.output_dir is not None and settings.weights is not None
    fingerprint = evaluation_fingerprint(model, dataset, benchmark, dataset_root, settings, prompt_style) if resumable else {}
    with (PartialRecords(settings.output_dir, rank(), fingerprint) if resumable else nullcontext()) as partial:
        records = run_evaluation(model, dataset, settings, device, builder.tokenizer, partial)
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
        write_jsonl_atomic(output / "records.jsonl", records)
        write_json_atomic(output / "metrics.json", summary)
        remove_partials(output)  # after the report: an interruption before this leaves them to resume from
        overlays = f" and overlays in {output / 'overlays'}" if settings.visualize else ""
        print(f"wrote {output / 'metrics.json'}, {output / 'records.jsonl'}{overlays}")
    if writer is not None:
        for key, value in headline(summary, variant).items():
            if key in TABLE_COLUMNS[benchmark.family] and value is not None:
                writer.add_scalar(f"eval_{benchmark.name}/{key}", value, step)
        writer.flush()
    return summary
