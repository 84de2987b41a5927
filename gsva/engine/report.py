"""Evaluate a split end to end and report: metrics table on stdout, ``metrics.json``,
``records.jsonl``, overlays and TensorBoard scalars (rank 0 writes)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch.utils.tensorboard import SummaryWriter

from gsva.data.refer import ReferIndex
from gsva.data.refer_seg_dataset import ReferSegDataset
from gsva.data.sample_builder import SampleBuilder
from gsva.engine.distributed import is_main
from gsva.engine.evaluator import EvalSettings, run_evaluation, summarize, write_json_atomic, write_records
from gsva.metrics import format_metrics_table
from gsva.model.gsva import GsvaModel


def evaluate_split(
    model: GsvaModel,
    builder: SampleBuilder,
    index: ReferIndex,
    split: str,
    settings: EvalSettings,
    device: torch.device,
    variant: str = "gres",
    writer: SummaryWriter | None = None,
    step: int = 0,
) -> dict[str, Any] | None:
    """Score ``split``; rank 0 prints and writes the report and returns it (others return None)."""
    dataset = ReferSegDataset(index, split, builder, train=False)
    records = run_evaluation(model, dataset, settings, device, builder.tokenizer)
    if not is_main():
        return None
    summary = summarize(records)
    summary.update({"split": split, "protocol": settings.protocol, "question": builder.prompts.eval_question, "settings": asdict(settings)})
    rows = {
        f"GSVA ({settings.protocol})": summary["metrics"][variant],
        "baseline: always [REJ]": summary["baselines"]["always_rej"],
        "baseline: always [SEG], union of all objects": summary["baselines"]["always_seg_union"],
    }
    print(f"\n{split}: {summary['num_expressions']} expressions, metric variant {variant!r}")
    print(format_metrics_table(rows))
    if settings.protocol == "generate":
        print(f"answers whose slots did not match the expressions: {summary['parse_failures']} slot(s)")
    if settings.output_dir is not None:
        output = Path(settings.output_dir)
        write_records(output / "records.jsonl", records)
        write_json_atomic(output / "metrics.json", summary)
        print(f"wrote {output / 'metrics.json'}, {output / 'records.jsonl'}" + (f" and overlays in {output / 'overlays'}" if settings.visualize else ""))
    if writer is not None:
        for key in ("giou", "ciou", "n_acc", "t_acc"):
            value = summary["metrics"][variant][key]
            if value is not None:
                writer.add_scalar(f"eval_{split}/{key}", value, step)
        writer.flush()
    return summary
