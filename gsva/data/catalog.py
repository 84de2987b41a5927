"""The one catalog of datasets: each is registered once, with its name (as configs and command
lines spell it), its task in the training mixture, the family of metrics its benchmarks are
scored with, and how it is opened for training, for evaluation and for checking.

    entry = dataset_entry("grefcoco")
    train_set = entry.open_training(root, "train", builder)
    val_set = entry.open_evaluation(root, "val", builder, question_style="gsva", one_per_prompt=False)
    report = check_dataset("grefcoco", root)

Adding a dataset: a reader and a dataset class under ``gsva/data/<task>/``, then one ``DatasetEntry``
in ``DATASETS`` below. Adding a benchmark family: see ``gsva.evaluation.families``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from gsva.config import TASKS, Config, ConfigError
from gsva.data.doctor import DatasetReport, FileCheck, OpenedDataset, run_checks
from gsva.data.mixture import TrainingDataset
from gsva.data.reason_seg.dataset import ReasonSegDataset, ReasonSegEvalDataset
from gsva.data.reason_seg.reader import ReasonSegIndex, check_reason_seg
from gsva.data.refer_seg.dataset import ReferSegDataset
from gsva.data.refer_seg.reader import ReferIndex, check_refer_seg
from gsva.data.sample_builder import SampleBuilder
from gsva.data.sem_seg.dataset import Ade20kEvalDataset, SemSegDataset
from gsva.data.sem_seg.reader import LabelOptions, check_sem_seg, open_semseg_source
from gsva.data.vqa.dataset import VqaDataset
from gsva.data.vqa.reader import LlavaInstruct, check_vqa

QuestionStyle = Literal["gsva", "lisa"]
"""How a referring benchmark asks: one prompt naming the expressions, or LISA's single-target one."""


def _sem_seg_training(name: str, root: Path, split: str, builder: SampleBuilder) -> TrainingDataset:
    options = LabelOptions(mapillary_unlabeled_is_class=builder.settings.mapillary_unlabeled == "class")
    return SemSegDataset(open_semseg_source(name, root, "train", options), builder)


def _refer_training(name: str, root: Path, split: str, builder: SampleBuilder) -> TrainingDataset:
    return ReferSegDataset(ReferIndex(root, name), split, builder, train=True)


def _vqa_training(name: str, root: Path, split: str, builder: SampleBuilder) -> TrainingDataset:
    return VqaDataset(LlavaInstruct(root), builder)


def _reason_seg_training(name: str, root: Path, split: str, builder: SampleBuilder) -> TrainingDataset:
    return ReasonSegDataset(ReasonSegIndex(root, "train"), builder)


def _refer_evaluation(name: str, root: Path, split: str, builder: SampleBuilder, style: QuestionStyle, one_per_prompt: bool) -> Any:
    return ReferSegDataset(ReferIndex(root, name), split, builder, train=False, prompt_style=style, one_per_prompt=one_per_prompt)


def _reason_seg_evaluation(name: str, root: Path, split: str, builder: SampleBuilder, style: QuestionStyle, one_per_prompt: bool) -> Any:
    return ReasonSegEvalDataset(ReasonSegIndex(root, split, load_explanations=False), builder)


def _ade20k_evaluation(name: str, root: Path, split: str, builder: SampleBuilder, style: QuestionStyle, one_per_prompt: bool) -> Any:
    return Ade20kEvalDataset(open_semseg_source(name, root, split), builder)


@dataclass(frozen=True)
class DatasetEntry:
    name: str
    task: str
    """One of ``TASKS``."""
    training: Callable[[str, Path, str, SampleBuilder], TrainingDataset]
    checking: Callable[[str, Path], OpenedDataset]
    family: str | None = None
    """Benchmark family of its evaluation splits (``gsva.evaluation.families``); None: not evaluated."""
    evaluation: Callable[[str, Path, str, SampleBuilder, QuestionStyle, bool], Any] | None = None
    no_target: bool = False
    """Its referring expressions include no-target ones, answered ``[REJ]``."""

    def open_training(self, root: Path | str, split: str, builder: SampleBuilder) -> TrainingDataset:
        """The training dataset (``split`` applies to the referring datasets, whose annotation
        files hold several splits; the others have one training split on disk)."""
        return self.training(self.name, Path(root), split, builder)

    def open_evaluation(
        self, root: Path | str, split: str, builder: SampleBuilder, question_style: QuestionStyle = "gsva", one_per_prompt: bool = False
    ) -> Any:
        """The evaluation dataset of ``split``; the question options apply to referring datasets."""
        if self.evaluation is None:
            raise ValueError(f"dataset {self.name!r} has no benchmark; benchmarks exist for {sorted(BENCHMARK_DATASETS)}")
        return self.evaluation(self.name, Path(root), split, builder, question_style, one_per_prompt)


_SEM_SEG = {"task": "sem_seg", "training": _sem_seg_training, "checking": check_sem_seg}
_REFER = {"task": "refer_seg", "training": _refer_training, "checking": check_refer_seg, "evaluation": _refer_evaluation}

DATASETS: dict[str, DatasetEntry] = {
    entry.name: entry
    for entry in (
        DatasetEntry("ade20k", **_SEM_SEG, family="ade20k", evaluation=_ade20k_evaluation),
        DatasetEntry("cocostuff", **_SEM_SEG),
        DatasetEntry("mapillary", **_SEM_SEG),
        DatasetEntry("paco_lvis", **_SEM_SEG),
        DatasetEntry("pascal_part", **_SEM_SEG),
        DatasetEntry("refcoco", **_REFER, family="res"),
        DatasetEntry("refcoco+", **_REFER, family="res"),
        DatasetEntry("refcocog", **_REFER, family="res"),
        DatasetEntry("refclef", **_REFER, family="res"),
        DatasetEntry("grefcoco", **_REFER, family="gres", no_target=True),
        DatasetEntry("refzom", **_REFER, family="refzom", no_target=True),
        DatasetEntry("llava_instruct_150k", "vqa", _vqa_training, check_vqa),
        DatasetEntry("reason_seg", "reason_seg", _reason_seg_training, check_reason_seg, family="reason_seg",
                     evaluation=_reason_seg_evaluation),
    )
}

BENCHMARK_DATASETS = {name: entry.family for name, entry in DATASETS.items() if entry.family is not None}
"""Every dataset that can be evaluated -> the family of metrics of its benchmarks."""


def dataset_entry(name: str) -> DatasetEntry:
    """The entry of dataset ``name``; ValueError naming the known datasets otherwise."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {sorted(DATASETS)}")
    return DATASETS[name]


def datasets_of_task(task: str) -> list[str]:
    return sorted(name for name, entry in DATASETS.items() if entry.task == task)


def check_benchmark(spec: str) -> tuple[str, str]:
    """``"<dataset>:<split>"`` -> (dataset, split); ValueError naming what is expected."""
    dataset, _, split = spec.partition(":")
    if dataset not in BENCHMARK_DATASETS or not split:
        raise ValueError(
            f"benchmark {spec!r}: expected <dataset>:<split> with a dataset among {sorted(BENCHMARK_DATASETS)}, "
            "e.g. grefcoco:val, refcocog:test, reason_seg:val, refzom:test, ade20k:val"
        )
    return dataset, split


def check_dataset(
    name: str,
    dataset_root: Path | str,
    max_files: int | None = None,
    progress: Callable[[list[FileCheck]], Iterable[FileCheck]] = iter,
) -> DatasetReport:
    """Open, count and read dataset ``name`` as training would (``gsva.data.doctor``); ``progress``
    wraps the files read (a progress bar)."""
    entry = dataset_entry(name)
    return run_checks(name, entry.task, lambda: entry.checking(name, Path(dataset_root)), max_files, progress)


def check_dataset_names(cfg: Config) -> None:
    """The datasets a config names exist for their task: ``data.tasks.<task>.datasets``,
    ``data.eval_dataset`` (a referring dataset) and ``run.eval_benchmarks``; ConfigError naming the
    key and the datasets it may name otherwise."""
    for task, spec in cfg.data.tasks.items():
        for name in spec.datasets:
            if name not in DATASETS or DATASETS[name].task != task:
                known = datasets_of_task(task)
                raise ConfigError(f"data.tasks.{task}.datasets: {name!r} is not a {task} dataset; expected one of {known}")
    if cfg.data.eval_dataset not in DATASETS or DATASETS[cfg.data.eval_dataset].task != "refer_seg":
        known = datasets_of_task("refer_seg")
        raise ConfigError(f"data.eval_dataset: {cfg.data.eval_dataset!r} is not a referring dataset; expected one of {known}")
    for index, benchmark in enumerate(cfg.run.eval_benchmarks):
        try:
            check_benchmark(benchmark)
        except ValueError as error:
            raise ConfigError(f"run.eval_benchmarks[{index}]: {error}") from None


def rejection_ablation_datasets(cfg: Config) -> list[str]:
    """Training datasets with no-target expressions while ``model.use_rej_token`` is false (the
    paper's ablation without ``[REJ]``: their absent targets are left out of training prompts)."""
    if cfg.model.use_rej_token:
        return []
    return [name for spec in cfg.data.tasks.values() for name in spec.datasets if DATASETS[name].no_target]
