"""Check a ``<dataset_dir>`` before training on it: what is present, what is missing, how much
there is, and which files cannot be read.

Each dataset is opened with the same reader training uses (so a missing file is reported with the
exact path that reader expects), counted, and then every file it would read is read once: the
image is decoded and checked against its annotations, and its masks are decoded.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from gsva.catalog import DATASET_TASKS
from gsva.data.llava_instruct import LlavaInstruct
from gsva.data.reason_seg import REASON_SEG_SPLITS, ReasonSegIndex
from gsva.data.refer import ReferIndex
from gsva.data.semseg import open_semseg_source
from gsva.data.transforms import read_rgb

FileCheck = tuple[Path, Callable[[], None]]
"""A file the training would read, and the function that reads it as training would."""


@dataclass
class DatasetReport:
    name: str
    task: str
    missing: str | None = None
    """The reader's message naming the exact path it expected, when the dataset is not there."""
    counts: dict[str, int] = field(default_factory=dict)
    files_checked: int = 0
    unreadable: list[str] = field(default_factory=list)
    """``"<path>: <reason>"`` for every file that failed to read."""

    @property
    def ok(self) -> bool:
        return self.missing is None and not self.unreadable


@dataclass
class OpenedDataset:
    counts: dict[str, int]
    files: list[FileCheck]


def _check_image(path: Path, expected_size: tuple[int, int] | None = None) -> tuple[int, int]:
    image = read_rgb(str(path))
    if expected_size is not None and image.shape[:2] != tuple(expected_size):
        raise ValueError(f"image is {image.shape[1]}x{image.shape[0]} (WxH), annotations say {expected_size[1]}x{expected_size[0]}")
    return image.shape[0], image.shape[1]


def _open_refer(name: str, root: Path) -> OpenedDataset:
    index = ReferIndex(root, name)
    counts: dict[str, int] = {}
    image_ids: set[int] = set()
    for split in index.splits:
        for key, value in index.count_summary(split).items():
            counts[f"{split}/{key}"] = value
        image_ids.update(index.image_ids(split))

    def check(image_id: int) -> Callable[[], None]:
        def run() -> None:
            record = index.image(image_id)
            _check_image(index.image_path(image_id), (record.height, record.width))
            for split in index.splits:
                for expression in index.expressions(image_id, split):
                    index.target_mask(image_id, expression.ann_ids)

        return run

    return OpenedDataset(counts, [(index.image_path(i), check(i)) for i in sorted(image_ids)])


def _open_sem_seg(name: str, root: Path) -> OpenedDataset:
    source = open_semseg_source(name, root, "train")

    def check(item: int) -> Callable[[], None]:
        def run() -> None:
            targets = source.read_targets(item)
            _check_image(source.image_path(item), (targets.height, targets.width))
            for class_id in targets.class_ids:
                targets.mask(class_id)

        return run

    counts = {"train/images": len(source), "classes": len(source.class_names)}
    return OpenedDataset(counts, [(source.image_path(i), check(i)) for i in range(len(source))])


def _open_vqa(name: str, root: Path) -> OpenedDataset:
    records = LlavaInstruct(root)
    paths = sorted({records[i].image_path for i in range(len(records))})
    counts = {
        "train/conversations": len(records),
        "train/turns": sum(len(records[i].turns) for i in range(len(records))),
        "train/images": len(paths),
    }
    return OpenedDataset(counts, [(path, lambda path=path: _check_image(path)) for path in paths])


def _open_reason_seg(name: str, root: Path) -> OpenedDataset:
    counts: dict[str, int] = {}
    files: list[FileCheck] = []
    for split in REASON_SEG_SPLITS:
        index = ReasonSegIndex(root, split)
        counts[f"{split}/images"] = len(index)
        counts[f"{split}/sentence_queries"] = sum(index[i].is_sentence for i in range(len(index)))
        if split == "train":
            counts["train/explained"] = sum(index[i].explanation is not None for i in range(len(index)))

        def check(index: ReasonSegIndex, item: int) -> Callable[[], None]:
            def run() -> None:
                height, width = _check_image(index[item].image_path)
                index.read_mask(index[item], height, width)

            return run

        files.extend((index[i].image_path, check(index, i)) for i in range(len(index)))
    return OpenedDataset(counts, files)


OPENERS: dict[str, Callable[[str, Path], OpenedDataset]] = {
    "refer_seg": _open_refer,
    "sem_seg": _open_sem_seg,
    "vqa": _open_vqa,
    "reason_seg": _open_reason_seg,
}


def spread(files: list[FileCheck], limit: int | None) -> list[FileCheck]:
    """All files, or ``limit`` of them spread evenly over the list (deterministic)."""
    if limit is None or limit >= len(files):
        return files
    step = len(files) / limit
    return [files[int(position * step)] for position in range(limit)]


def check_dataset(
    name: str,
    dataset_root: Path | str,
    max_files: int | None = None,
    progress: Callable[[list[FileCheck]], Iterable[FileCheck]] = iter,
) -> DatasetReport:
    """Open, count and read dataset ``name``; ``progress`` wraps the files read (a progress bar)."""
    if name not in DATASET_TASKS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {sorted(DATASET_TASKS)}")
    task = DATASET_TASKS[name]
    report = DatasetReport(name=name, task=task)
    try:
        opened = OPENERS[task](name, Path(dataset_root))
    except FileNotFoundError as error:
        report.missing = str(error)
        return report
    except (ValueError, OSError) as error:
        report.unreadable.append(str(error))
        return report
    report.counts = opened.counts
    for path, read in progress(spread(opened.files, max_files)):
        try:
            read()
        except (ValueError, OSError) as error:
            report.unreadable.append(f"{path}: {error}")
        report.files_checked += 1
    return report
