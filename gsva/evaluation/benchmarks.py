"""The benchmarks of the paper: ``<dataset>:<split>`` (``grefcoco:val``, ``refcocog:test``,
``reason_seg:val``, ``refzom:test``, ``ade20k:val``), opened with the prompts the settings ask for
and scored by the evaluator of their family.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gsva.data.catalog import BENCHMARK_DATASETS, check_benchmark, dataset_entry
from gsva.data.sample_builder import SampleBuilder
from gsva.evaluation.evaluator import BenchmarkEvaluator
from gsva.evaluation.families import FAMILIES
from gsva.config import EvalConfig
from gsva.text.prompts import RELEASE_EVAL_PROMPT, resolve_eval_question


@dataclass(frozen=True)
class Benchmark:
    dataset: str
    split: str

    @property
    def name(self) -> str:
        return f"{self.dataset}:{self.split}"

    @property
    def family(self) -> str:
        return BENCHMARK_DATASETS[self.dataset]


def parse_benchmark(spec: str) -> Benchmark:
    """``"<dataset>:<split>"`` -> Benchmark; a clear error for anything else."""
    return Benchmark(*check_benchmark(spec))


def builder_for(builder: SampleBuilder, options: EvalConfig) -> SampleBuilder:
    """``builder`` asking ``options.question_template``, or the authors' released evaluation
    prompt when ``options.prompt_style`` is ``gsva_release``."""
    if options.prompt_style == "gsva_release":
        return builder.with_prompts(**RELEASE_EVAL_PROMPT)
    return builder.with_prompts(eval_question=resolve_eval_question(options.question_template))


def open_benchmark(benchmark: Benchmark, dataset_root: Path | str, builder: SampleBuilder, options: EvalConfig) -> Any:
    """The evaluation dataset of ``benchmark``; the prompt options apply to referring benchmarks."""
    return dataset_entry(benchmark.dataset).open_evaluation(
        dataset_root,
        benchmark.split,
        builder_for(builder, options),
        question_style="lisa" if options.prompt_style == "lisa" else "gsva",
        one_per_prompt=options.one_expression_per_prompt,
    )


def benchmark_evaluator(benchmark: Benchmark, dataset: Any) -> BenchmarkEvaluator:
    """The evaluator of ``benchmark``'s family for ``dataset``."""
    return FAMILIES[benchmark.family](dataset)
