"""Open a training dataset by name (``gsva.catalog.DATASET_TASKS``) from a ``<dataset_dir>``."""

from __future__ import annotations

from pathlib import Path

from gsva.catalog import DATASET_TASKS
from gsva.data.llava_instruct import LlavaInstruct
from gsva.data.mixture import TrainingDataset
from gsva.data.reason_seg import ReasonSegIndex
from gsva.data.reason_seg_dataset import ReasonSegDataset
from gsva.data.refer import ReferIndex
from gsva.data.refer_seg_dataset import ReferSegDataset
from gsva.data.sample_builder import SampleBuilder
from gsva.data.sem_seg_dataset import SemSegDataset
from gsva.data.semseg import open_semseg_source
from gsva.data.vqa_dataset import VqaDataset


def open_training_dataset(name: str, dataset_root: Path | str, split: str, builder: SampleBuilder) -> TrainingDataset:
    """The training split of dataset ``name`` (``split`` applies to the referring datasets, whose
    annotation files hold several splits; the others have one training split on disk)."""
    task = DATASET_TASKS.get(name)
    if task == "sem_seg":
        return SemSegDataset(open_semseg_source(name, dataset_root, "train"), builder)
    if task == "refer_seg":
        return ReferSegDataset(ReferIndex(dataset_root, name), split, builder, train=True)
    if task == "vqa":
        return VqaDataset(LlavaInstruct(dataset_root), builder)
    if task == "reason_seg":
        return ReasonSegDataset(ReasonSegIndex(dataset_root, "train"), builder)
    raise ValueError(f"unknown dataset {name!r}; expected one of {sorted(DATASET_TASKS)}")
