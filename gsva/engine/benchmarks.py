"""The benchmarks of the paper: which dataset and split, how its samples are asked, and how its
records become metrics.

A benchmark is named ``<dataset>:<split>`` (``grefcoco:val``, ``refcocog:test``,
``reason_seg:val``, ``refzom:test``, ``ade20k:val``). Its family decides the metrics:

| family | datasets | metrics |
|---|---|---|
| ``gres`` | grefcoco | gIoU, cIoU, N-acc, T-acc, Pr@0.7/0.8/0.9, per kind; trivial baselines |
| ``res`` | refcoco, refcoco+, refcocog, refclef | gIoU, cIoU, REC Acc@0.5 (box of the mask), Pr@0.5..0.9 |
| ``refzom`` | refzom | oIoU, mIoU (samples with targets), Acc (no-target samples, empty mask) |
| ``reason_seg`` | reason_seg | gIoU, cIoU |
| ``ade20k`` | ade20k | mIoU over the classes present (Table A5) |
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gsva.catalog import BENCHMARK_FAMILIES, check_benchmark
from gsva.benchmark_metrics import class_miou, reason_seg_metrics, refzom_metrics, res_metrics
from gsva.data.prompts import RELEASE_EVAL_PROMPT
from gsva.data.reason_seg import ReasonSegIndex
from gsva.data.reason_seg_dataset import ReasonSegEvalDataset
from gsva.data.refer import ReferIndex
from gsva.data.refer_seg_dataset import ReferSegDataset
from gsva.data.sample_builder import SampleBuilder
from gsva.data.sem_seg_dataset import Ade20kEvalDataset
from gsva.data.semseg import open_semseg_source
from gsva.metrics import VARIANTS, ExpressionScore, gres_metrics

TABLE_COLUMNS = {
    "gres": ("giou", "ciou", "n_acc", "t_acc", "pr@0.7", "pr@0.8", "pr@0.9"),
    "res": ("giou", "ciou", "rec_acc@0.5", "pr@0.5", "pr@0.7", "pr@0.9"),
    "refzom": ("oiou", "miou", "acc"),
    "reason_seg": ("giou", "ciou"),
    "ade20k": ("miou", "num_classes"),
}
BASELINES = ("always_rej", "always_seg_union")


@dataclass(frozen=True)
class Benchmark:
    dataset: str
    split: str

    @property
    def name(self) -> str:
        return f"{self.dataset}:{self.split}"

    @property
    def family(self) -> str:
        return BENCHMARK_FAMILIES[self.dataset]


def parse_benchmark(spec: str) -> Benchmark:
    """``"<dataset>:<split>"`` -> Benchmark; a clear error for anything else."""
    return Benchmark(*check_benchmark(spec))


PROMPT_STYLES = ("gsva", "gsva_release", "lisa")
"""gsva: one prompt per image naming all its expressions (the paper); gsva_release: the same with
the exact prompt of the authors' released evaluation; lisa: one single-target prompt per
expression."""


def builder_for_style(builder: SampleBuilder, prompt_style: str) -> SampleBuilder:
    """``builder`` with the authors' released evaluation prompt when ``prompt_style`` asks for it."""
    if prompt_style not in PROMPT_STYLES:
        raise ValueError(f"unknown prompt style {prompt_style!r}; expected one of {PROMPT_STYLES}")
    if prompt_style != "gsva_release":
        return builder
    return SampleBuilder(builder.tokenizer, dataclasses.replace(builder.prompts, **RELEASE_EVAL_PROMPT), builder.settings)


def open_benchmark(
    benchmark: Benchmark, dataset_root: Path | str, builder: SampleBuilder, prompt_style: str = "gsva", one_per_prompt: bool = False
) -> ReferSegDataset | ReasonSegEvalDataset | Ade20kEvalDataset:
    """The evaluation dataset of ``benchmark``; the prompt options apply to referring benchmarks."""
    builder = builder_for_style(builder, prompt_style)
    if benchmark.family == "reason_seg":
        return ReasonSegEvalDataset(ReasonSegIndex(dataset_root, benchmark.split, load_explanations=False), builder)
    if benchmark.family == "ade20k":
        return Ade20kEvalDataset(open_semseg_source("ade20k", dataset_root, benchmark.split), builder)
    index = ReferIndex(dataset_root, benchmark.dataset)
    style = "lisa" if prompt_style == "lisa" else "gsva"
    return ReferSegDataset(index, benchmark.split, builder, train=False, prompt_style=style, one_per_prompt=one_per_prompt)


def scores_of(records: list[dict[str, Any]], key: str | None = None) -> list[ExpressionScore]:
    """The ``ExpressionScore`` of each record (or of its baseline ``key``)."""
    names = [f.name for f in dataclasses.fields(ExpressionScore)]
    return [ExpressionScore(**{name: (record[key] if key else record)[name] for name in names}) for record in records]


def summarize(family: str, records: list[dict[str, Any]]) -> dict[str, Any]:
    """Metrics of one benchmark from its per-slot records (what ``scripts/score.py`` recomputes)."""
    scores = scores_of(records)
    summary: dict[str, Any] = {
        "family": family,
        "num_records": len(records),
        "parse_failures": int(sum(record.get("parse_failures", 0) for record in records)),
    }
    if family == "gres":
        summary["metrics"] = {variant: gres_metrics(scores, variant) for variant in VARIANTS}
        summary["baselines"] = {name: gres_metrics(scores_of(records, name)) for name in BASELINES if name in records[0]}
    elif family == "res":
        summary["metrics"] = res_metrics(scores, [record["box_iou"] for record in records])
    elif family == "refzom":
        summary["metrics"] = refzom_metrics(scores)
    elif family == "reason_seg":
        summary["metrics"] = reason_seg_metrics(scores)
    elif family == "ade20k":
        summary["metrics"] = class_miou([record["class_id"] for record in records], scores)
    else:
        raise ValueError(f"unknown benchmark family {family!r}; expected one of {sorted(TABLE_COLUMNS)}")
    return summary


def headline(summary: dict[str, Any], variant: str = "gres") -> dict[str, Any]:
    """The metrics row of the summary (for GRES, of ``variant``)."""
    metrics = summary["metrics"]
    return metrics[variant] if summary["family"] == "gres" else metrics
