"""The table of datasets: every dataset is registered here, once, with its name (as configs and
command lines spell it), its task in the training mixture, how it is stored on disk, and the family
of metrics its benchmarks are scored with.

    entry = DATASETS["refcocog"]          # DatasetEntry("refcocog", "refer_seg", ReferFormat(...), ...)
    stored_format("refcocog", ReferFormat)

The table is plain data and imports no reader: the readers that read several datasets
(``gsva.data.sem_seg.reader``, ``gsva.data.refer_seg.reader``) look their dataset's format up here,
and the catalog (``gsva.data.catalog``) opens any dataset of the table with its task's reader.

Adding a dataset: one ``DatasetEntry`` in ``DATASETS`` below (a semantic segmentation dataset in a
new folder layout also needs that layout's opener in ``gsva.data.sem_seg.reader``; a dataset of a
new task needs its reader and dataset class under ``gsva/data/<task>/`` and its task's openers in
the catalog).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal, TypeVar


@dataclass(frozen=True)
class SemSegFormat:
    """How a semantic segmentation dataset is stored (read by ``gsva.data.sem_seg.reader``)."""

    kind: ClassVar[str] = "semantic segmentation"
    layout: str
    """Its folder layout: the name of the reader's opener for it (``LAYOUT_OPENERS`` there)."""
    splits: tuple[str, ...]
    """The splits on disk."""


@dataclass(frozen=True)
class ReferFormat:
    """How a referring dataset is stored under ``<root>/refer_seg`` (read by
    ``gsva.data.refer_seg.reader``)."""

    kind: ClassVar[str] = "referring"
    refs_file: str
    """Name of the refs file; ``{split_by}`` stands for the split scheme."""
    default_split_by: str | None
    """The split scheme read when none is asked for; None: a single refs file, no split scheme."""
    refs_encoding: Literal["pickle", "json"]
    """How the refs file is encoded (a pickle written by Python 2, or JSON)."""
    images_folder: str
    """The folder its images' ``file_name`` are relative to, relative to ``<root>/refer_seg/images``."""
    one_target_per_ref: bool
    """Every ref names exactly one annotation."""


@dataclass(frozen=True)
class DatasetEntry:
    name: str
    task: str
    """One of ``gsva.config.TASKS``."""
    format: SemSegFormat | ReferFormat | None = None
    """How it is stored, for the readers of several datasets; None: its task's reader reads this one
    dataset only (LLaVA-Instruct-150K, ReasonSeg), in a layout that reader holds."""
    family: str | None = None
    """Benchmark family of its evaluation splits (``gsva.evaluation.families``); None: not evaluated."""
    no_target: bool = False
    """Its referring expressions include no-target ones, answered ``[REJ]``."""


_COCO_TRAIN2014 = "mscoco/images/train2014"
_REFS_BY_SCHEME = "refs({split_by}).p"

DATASETS: dict[str, DatasetEntry] = {
    entry.name: entry
    for entry in (
        DatasetEntry("ade20k", "sem_seg", SemSegFormat("ade20k_scene_parsing", ("train", "val")), family="ade20k"),
        DatasetEntry("cocostuff", "sem_seg", SemSegFormat("cocostuff_label_maps", ("train",))),
        DatasetEntry("mapillary", "sem_seg", SemSegFormat("mapillary_vistas_v2", ("train",))),
        DatasetEntry("paco_lvis", "sem_seg", SemSegFormat("paco_lvis_json", ("train",))),
        DatasetEntry("pascal_part", "sem_seg", SemSegFormat("pascal_part_json", ("train",))),
        DatasetEntry("refcoco", "refer_seg", ReferFormat(_REFS_BY_SCHEME, "unc", "pickle", _COCO_TRAIN2014, True), family="res"),
        DatasetEntry("refcoco+", "refer_seg", ReferFormat(_REFS_BY_SCHEME, "unc", "pickle", _COCO_TRAIN2014, True), family="res"),
        DatasetEntry("refcocog", "refer_seg", ReferFormat(_REFS_BY_SCHEME, "umd", "pickle", _COCO_TRAIN2014, True), family="res"),
        DatasetEntry("refclef", "refer_seg", ReferFormat(_REFS_BY_SCHEME, "unc", "pickle", "saiapr_tc-12", True), family="res"),
        DatasetEntry("grefcoco", "refer_seg", ReferFormat("grefs({split_by}).json", "unc", "json", _COCO_TRAIN2014, False),
                     family="gres", no_target=True),
        DatasetEntry("refzom", "refer_seg", ReferFormat("Ref_ZOM.p", None, "pickle", _COCO_TRAIN2014, False),
                     family="refzom", no_target=True),
        DatasetEntry("llava_instruct_150k", "vqa"),
        DatasetEntry("reason_seg", "reason_seg", family="reason_seg"),
    )
}
"""Every dataset, by name, in registration order."""

StoredFormat = TypeVar("StoredFormat", SemSegFormat, ReferFormat)


def datasets_stored_as(format_type: type[SemSegFormat | ReferFormat]) -> list[str]:
    """The datasets stored in a format of ``format_type``, in registration order."""
    return [name for name, entry in DATASETS.items() if isinstance(entry.format, format_type)]


def stored_format(name: str, format_type: type[StoredFormat]) -> StoredFormat:
    """How dataset ``name`` is stored, a format of ``format_type``; ValueError naming ``name`` and
    the datasets stored in such a format otherwise."""
    entry = DATASETS.get(name)
    if entry is None or not isinstance(entry.format, format_type):
        known = ", ".join(datasets_stored_as(format_type))
        raise ValueError(f"unknown {format_type.kind} dataset {name!r}; known datasets: {known}")
    return entry.format
