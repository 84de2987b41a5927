"""Resumable evaluation: the records of finished images, kept batch by batch on disk.

While an evaluation with an output directory runs, each rank appends the records of every batch
it finishes to ``records.partial.rank<R>.jsonl`` in that directory and syncs it to disk. Restarted
with the same output directory, the evaluation reads the file back and scores only the images it
does not hold; the report is then computed from the union. The file's first line is the
*fingerprint* of what its records were computed from (benchmark, protocol, prompts, weights file,
world size and rank, …): a different fingerprint means different results, so the file is started
over (with a log message) and never mixed with new records.

File layout, one JSON document per line::

    {"fingerprint": {...}}
    {"items": [dataset indices of the batch], "records": [...], "overlays": overlay PNGs written}
    ...

A batch line cut short by an interruption is dropped, and its images are evaluated again. Once
the report is written, :func:`remove_partials` deletes the files.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from types import TracebackType
from typing import Any

from torch import nn

from gsva.atomic import write_text_atomic

LOGGER = logging.getLogger(__name__)
PARTIAL_GLOB = "records.partial.rank*.jsonl"


def partial_path(output_dir: str | Path, rank: int) -> Path:
    """The partial records file of ``rank`` in ``output_dir``."""
    return Path(output_dir) / f"records.partial.rank{rank}.jsonl"


def weights_identity(path: str | Path) -> dict[str, Any]:
    """Resolved path, size and modification time of a weights file (a rewritten file differs)."""
    path = Path(path).resolve()
    stat = path.stat()
    return {"path": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def model_layout(model: nn.Module) -> str:
    """Digest of the names, dtypes and shapes of ``model``'s state (precision, LoRA, sizes)."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}\n".encode())
    return digest.hexdigest()


def _batch_lines(lines: list[str]) -> list[dict[str, Any]]:
    """The batch documents of ``lines`` up to the first one that is cut short or malformed."""
    batches = []
    for line in lines:
        try:
            batch = json.loads(line)
        except json.JSONDecodeError:
            break
        if not (isinstance(batch, dict) and {"items", "records", "overlays"} <= batch.keys()):
            break
        batches.append(batch)
    return batches


def _stored_fingerprint(lines: list[str]) -> dict[str, Any]:
    """The fingerprint on the first of ``lines``; {} when it has none."""
    try:
        header = json.loads(lines[0]) if lines else {}
    except json.JSONDecodeError:
        return {}
    stored = header.get("fingerprint") if isinstance(header, dict) else None
    return stored if isinstance(stored, dict) else {}


def _read_batches(path: Path, fingerprint: dict[str, Any]) -> list[dict[str, Any]]:
    """The finished batches stored in ``path`` when its fingerprint is ``fingerprint``; [] else."""
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    stored = _stored_fingerprint(lines)
    if stored != fingerprint:
        differing = sorted(key for key in fingerprint.keys() | stored.keys() if stored.get(key) != fingerprint.get(key))
        LOGGER.warning(
            "%s holds records of a different evaluation (differing: %s); starting this evaluation over",
            path, ", ".join(differing) if stored else "no readable fingerprint",
        )
        return []
    return _batch_lines(lines[1:])


class PartialRecords:
    """This rank's partial records file, opened for appending after what it already holds.

    ``done_items``, ``records`` and ``overlays``: the dataset indices, records (in the order they
    were written) and overlay count of the batches finished by earlier runs.
    """

    def __init__(self, output_dir: str | Path, rank: int, fingerprint: dict[str, Any]) -> None:
        self.path = partial_path(output_dir, rank)
        fingerprint = json.loads(json.dumps(fingerprint))  # as it reads back from the file
        batches = _read_batches(self.path, fingerprint)
        self.done_items: set[int] = {item for batch in batches for item in batch["items"]}
        self.records: list[dict[str, Any]] = [record for batch in batches for record in batch["records"]]
        self.overlays: int = sum(batch["overlays"] for batch in batches)
        if batches:
            LOGGER.info("%s: resuming after %d finished images", self.path, len(self.done_items))
        # Rewritten whole: drops a batch line cut short by the interruption before appending.
        lines = [{"fingerprint": fingerprint}, *batches]
        write_text_atomic(self.path, "".join(json.dumps(line) + "\n" for line in lines))
        self._handle = self.path.open("a", encoding="utf-8")

    def append(self, items: list[int], records: list[dict[str, Any]], overlays: int) -> None:
        """Store one finished batch: its dataset indices, records and overlay count, synced to disk."""
        self._handle.write(json.dumps({"items": items, "records": records, "overlays": overlays}) + "\n")
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def close(self) -> None:
        """Close the file; what was appended stays on disk for the next run or the report."""
        self._handle.close()

    def __enter__(self) -> PartialRecords:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None) -> None:
        self.close()


def remove_partials(output_dir: str | Path) -> None:
    """Delete every rank's partial records file of ``output_dir`` (once its report is written)."""
    for path in Path(output_dir).glob(PARTIAL_GLOB):
        path.unlink(missing_ok=True)
