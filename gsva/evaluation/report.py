"""Evaluate one benchmark end to end and report: the table on stdout, ``metrics.json``,
``records.jsonl``, overlays and TensorBoard scalars (rank 0 writes, each file atomically), in
``EvalSettings.report_dir`` (one naming for training and ``eval.py``).

With a report folder and a weights file (``EvalSettings.weights``), the evaluation is resumable
(``gsva.evaluation.resume``): restarted after an interruption with the same folder, it scores only
the images not finished before, and reports the same metrics as an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from gsva.atomic import write_json_atomic, write_jsonl_atomic
from gsva.data.sample_builder import SampleBuilder
from gsva.distributed import rank, world_size
from gsva.evaluation.benchmarks import Benchmark, benchmark_evaluator, open_benchmark
from gsva.evaluation.evaluator import format_report, headline_metrics
from gsva.evaluation.loop import run_evaluation
from gsva.evaluation.resume import PartialRecords, model_layout, remove_partials, weights_identity
from gsva.evaluation.settings import EvalSettings
from gsva.model.gsva import GsvaModel
from gsva.text.conversation import ChatTemplate
from gsva.text.prompts import PromptSettings


def evaluation_fingerprint(
    model: GsvaModel, dataset: Any, benchmark: Benchmark, dataset_root: str | Path, settings: EvalSettings
) -> dict[str, Any]:
    """What the records of one evaluation depend on: a resumed evaluation must match all of it."""
    return {
        "benchmark": benchmark.name,
        "dataset_root": str(Path(dataset_root).resolve()),
        "num_items": len(dataset),
        "protocol": settings.options.protocol,
        "max_new_tokens": settings.options.max_new_tokens,
        "prompt_style": settings.options.prompt_style,
        "one_expression_per_prompt": settings.options.one_expression_per_prompt,
        "prompts": prompt_fingerprint(dataset.builder.prompts),
        "samples": asdict(dataset.builder.settings),
        "weights": weights_identity(settings.weights),
        "model": model_layout(model),
        "world_size": world_size(),
    }


def prompt_fingerprint(prompts: PromptSettings) -> dict[str, Any]:
    """The prompt settings as plain values; a chat template counts by its Jinja source."""
    fields = {field.name: getattr(prompts, field.name) for field in dataclasses.fields(prompts) if field.name != "template"}
    template = prompts.template
    rendering = template.tokenizer.chat_template if isinstance(template, ChatTemplate) else asdict(template)
    return {**fields, "template": {"name": template.name, "rendering": rendering}}


def evaluate_benchmark(
    model: GsvaModel,
    builder: SampleBuilder,
    benchmark: Benchmark,
    dataset_root: str | Path,
    settings: EvalSettings,
    device: torch.device,
) -> dict[str, Any] | None:
    """Score ``benchmark``; rank 0 prints and writes the report and returns it (others: None).
    The summary's ``headline`` holds the metrics of the benchmark's table, for a caller to log."""
    dataset = open_benchmark(benchmark, dataset_root, builder, settings.options)
    evaluator = benchmark_evaluator(benchmark, dataset)
    output = settings.report_dir(benchmark.dataset, benchmark.split)
    resumable = output is not None and settings.weights is not None
    fingerprint = evaluation_fingerprint(model, dataset, benchmark, dataset_root, settings) if resumable else {}
    options = settings.options
    with (PartialRecords(output, rank(), fingerprint) if resumable else nullcontext()) as partial:
        overlay_dir = output / "overlays" if output is not None and options.visualize else None
        run_evaluation(model, dataset, evaluator, options, device, builder.tokenizer, partial, overlay_dir)
    summary = evaluator.evaluate()
    if not summary:
        return None
    family = type(evaluator)
    summary.update(
        benchmark=benchmark.name,
        protocol=options.protocol,
        prompt_style=options.prompt_style,
        question=dataset.builder.prompts.eval_question,
        settings=asdict(options),
        headline=headline_metrics(family, summary, options.metric_variant),
    )
    print(format_report(family, summary, options.protocol, benchmark.name, options.metric_variant))
    if output is not None:
        write_jsonl_atomic(output / "records.jsonl", evaluator.records)
        write_json_atomic(output / "metrics.json", summary)
        remove_partials(output)  # after the report: an interruption before this leaves them to resume from
        overlays = f" and overlays in {overlay_dir}" if overlay_dir is not None else ""
        print(f"wrote {output / 'metrics.json'}, {output / 'records.jsonl'}{overlays}")
    return summary
