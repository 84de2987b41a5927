"""Check a ``<dataset_dir>`` before training on it: what is present, what is missing, how much
there is, and which files cannot be read.

Each dataset is opened with the same reader training uses (so a missing file is reported with the
exact path that reader expects), counted, and then every file it would read is read once: the
image is decoded and checked against its annotations, and its masks are decoded. Each reader
module says how its dataset is opened for checking (``check_<task>``, an ``OpenedDataset``); the
catalog (``gsva.data.catalog.check_dataset``) runs it here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

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


def check_image(path: Path, expected_size: tuple[int, int] | None = None) -> tuple[int, int]:
    image = read_rgb(str(path))
    if expected_size is not None and image.shape[:2] != tuple(expected_size):
        raise ValueError(f"image is {image.shape[1]}x{image.shape[0]} (WxH), annotations say {expected_size[1]}x{expected_size[0]}")
    return image.shape[0], image.shape[1]


def spread(files: list[FileCheck], limit: int | None) -> list[FileCheck]:
    """All files, or ``limit`` of them spread evenly over the list (deterministic)."""
    if limit is None or limit >= len(files):
        return files
    step = len(files) / limit
    return [files[int(position * step)] for position in range(limit)]


def run_checks(
    name: str,
    task: str,
    open_dataset: Callable[[], OpenedDataset],
    max_files: int | None = None,
    progress: Callable[[list[FileCheck]], Iterable[FileCheck]] = iter,
) -> DatasetReport:
    """Open dataset ``name`` with ``open_dataset``, count it and read its files (``max_files`` of
    them, spread evenly, when given); ``progress`` wraps the files read (a progress bar)."""
    report = DatasetReport(name=name, task=task)
    try:
        opened = open_dataset()
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
