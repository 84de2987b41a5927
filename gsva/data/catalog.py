"""The catalog of datasets: opens any dataset of the registry (``gsva.data.registry``, where each
dataset is registered once: its name, task, on-disk format and benchmark family) for training, for
evaluation and for checking, with the readers of its task; and checks the dataset names a config
gives against the registry.

    entry = dataset_entry("grefcoco")
    train_set = entry.open_training(root, "train", builder)
    val_set = entry.open_evaluation(root, "val", builder, question_style="gsva", one_per_prompt=False)
    report = check_dataset("grefcoco", root)

Adding a dataset: one ``DatasetEntry`` in the registry; a dataset of a new task also needs its
reader and dataset class under ``gsva/data/<task>/`` and that task's ``TaskOpeners`` in
``TASK_OPENERS`` below. Adding a benchmark family: see ``gsva.evaluation.families``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from gsva.config import Config, ConfigError
from gsva.data.doctor import DatasetReport, FileCheck, OpenedDataset, run_checks
from gsva.data.mixture import TrainingDataset
from gsva.data.reason_seg.dataset import ReasonSegDataset, ReasonSegEvalDataset
from gsva.data.reason_seg.reader import ReasonSegIndex, check_reason_seg
from gsva.data.refer_seg.dataset import ReferSegDataset
from gsva.data.refer_seg.reader import ReferIndex, check_refer_seg
from gsva.data.registry import DATASETS, DatasetEntry
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
    """ADE20K's benchmark protocol, that of the one semantic segmentation dataset with a benchmark."""
    return Ade20kEvalDataset(open_semseg_source(name, root, split), builder)


@dataclass(frozen=True)
class TaskOpeners:
    """How the datasets of one task are opened, each opener given the dataset's name and root."""

    training: Callable[[str, Path, str, SampleBuilder], TrainingDataset]
    checking: Callable[[str, Path], OpenedDataset]
    evaluation: Callable[[str, Path, str, SampleBuilder, QuestionStyle, bool], Any] | None = None
    """Opens a benchmark split of a dataset that has a benchmark family; None: the task has none."""


TASK_OPENERS: dict[str, TaskOpeners] = {
    "sem_seg": TaskOpeners(_sem_seg_training, check_sem_seg, _ade20k_evaluation),
    "refer_seg": TaskOpeners(_refer_training, check_refer_seg, _refer_evaluation),
    "vqa": TaskOpeners(_vqa_training, check_vqa),
    "reason_seg": TaskOpeners(_reason_seg_training, check_reason_seg, _reason_seg_evaluation),
}
"""Task (``gsva.config.TASKS``) -> the openers of its datasets."""

BENCHMARK_DATASETS = {name: entry.family for name, entry in DATASETS.items() if entry.family is not None}
"""Every dataset that can be evaluated -> the family of metrics of its benchmarks."""


@dataclass(frozen=True)
class CatalogEntry:
    """A dataset of the registry with the openers of its task."""

    dataset: DatasetEntry
    openers: TaskOpeners

    def open_training(self, root: Path | str, split: str, builder: SampleBuilder) -> TrainingDataset:
        """The training dataset (``split`` applies to the referring datasets, whose annotation
        files hold several splits; the others have one training split on disk)."""
        return self.openers.training(self.dataset.name, Path(root), split, builder)

    def open_evaluation(
        self, root: Path | str, split: str, builder: SampleBuilder, question_style: QuestionStyle = "gsva", one_per_prompt: bool = False
    ) -> Any:
        """The evaluation dataset of ``split``; the question options apply to referring datasets."""
        if self.dataset.family is None or self.openers.evaluation is None:
            raise ValueError(f"dataset {self.dataset.name!r} has no benchmark; benchmarks exist for {sorted(BENCHMARK_DATASETS)}")
        return self.openers.evaluation(self.dataset.name, Path(root), split, builder, question_style, one_per_prompt)


def dataset_entry(name: str) -> CatalogEntry:
    """The registered dataset ``name`` with its task's openers; ValueError naming the known
    datasets otherwise."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {sorted(DATASETS)}")
    dataset = DATASETS[name]
    return CatalogEntry(dataset, TASK_OPENERS[dataset.task])


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
    return run_checks(name, entry.dataset.task, lambda: entry.openers.checking(name, Path(dataset_root)), max_files, progress)


def check_dataset_names(cfg: Config) -> None:
    """The datasets a config names exist for their task: ``data.tasks.<task>.datasets``,
    and ``eval.benchmarks``; ConfigError naming the key and the datasets it may name otherwise."""
    for task, spec in cfg.data.tasks.items():
        for name in spec.datasets:
            if name not in DATASETS or DATASETS[name].task != task:
                known = datasets_of_task(task)
                raise ConfigError(f"data.tasks.{task}.datasets: {name!r} is not a {task} dataset; expected one of {known}")
    for index, benchmark in enumerate(cfg.eval.benchmarks):
        try:
            check_benchmark(benchmark)
        except ValueError as error:
            raise ConfigError(f"eval.benchmarks[{index}]: {error}") from None


def rejection_ablation_datasets(cfg: Config) -> list[str]:
    """Training datasets with no-target expressions while ``model.use_rej_token`` is false (the
    paper's ablation without ``[REJ]``: their absent targets are left out of training prompts)."""
    if cfg.model.use_rej_token:
        return []
    return [name for spec in cfg.data.tasks.values() for name in spec.datasets if DATASETS[name].no_target]
