"""Crash-safe DeepSpeed checkpoints: staged, published by rename, ``latest`` written last.

``save_checkpoint`` has DeepSpeed write tag ``stepN`` into ``<dir>/.staging-stepN/``, adds this
rank's RNG states (python, numpy, torch, CUDA) beside it, flushes every file to disk, then rank 0
renames the finished tag directory to ``<dir>/stepN`` and replaces ``<dir>/latest`` atomically.
A process killed at any moment leaves either the previous complete checkpoint named by ``latest``
or a ``.staging-*`` folder that nothing reads (and the next save removes). ``--resume auto``
follows ``latest``; pruning never deletes the checkpoint it names.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from gsva.atomic import sync_directory, write_text_atomic
from gsva.distributed import barrier, is_main, rank

LATEST = "latest"
STAGING_PREFIX = ".staging-"


def _fsync_tree(directory: Path) -> None:
    for path in sorted(directory.rglob("*")):
        if path.is_file():
            with path.open("rb") as handle:
                os.fsync(handle.fileno())
    sync_directory(directory)


def rng_state() -> dict[str, Any]:
    """This process's random states, in types ``torch.load(weights_only=True)`` accepts."""
    version, internal, gauss = random.getstate()
    kind, keys, position, has_gauss, cached = np.random.get_state()
    state = {
        "python": [version, list(internal), gauss],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _rng_file(tag_dir: Path) -> Path:
    return tag_dir / f"rng_rank{rank()}.pt"


def save_checkpoint(engine, checkpoint_dir: Path, tag: str, client_state: dict[str, Any]) -> Path:
    """Write checkpoint ``tag`` of every rank and publish it; returns its directory."""
    staging = checkpoint_dir / f"{STAGING_PREFIX}{tag}"
    if is_main():
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(staging, ignore_errors=True)
    barrier()
    engine.save_checkpoint(str(staging), tag=tag, client_state=client_state, save_latest=False)
    torch.save(rng_state(), _rng_file(staging / tag))
    _fsync_tree(staging / tag)
    barrier()
    final = checkpoint_dir / tag
    if is_main():
        if final.exists():  # the same step saved again (a run restarted from an earlier checkpoint)
            shutil.rmtree(final)
        os.replace(staging / tag, final)
        shutil.rmtree(staging)
        sync_directory(checkpoint_dir)
        write_text_atomic(checkpoint_dir / LATEST, tag)
    barrier()
    return final


def load_rng_state(tag_dir: Path) -> bool:
    """Restore this rank's RNG states saved with the checkpoint; False when it has none (saved
    with another number of ranks, or by an older version)."""
    path = _rng_file(tag_dir)
    if not path.is_file():
        return False
    restore_rng_state(torch.load(path, weights_only=True))
    return True


def remove_staging(checkpoint_dir: Path) -> None:
    """Delete the unfinished checkpoints a killed run left behind (rank 0)."""
    for leftover in checkpoint_dir.glob(f"{STAGING_PREFIX}*"):
        shutil.rmtree(leftover, ignore_errors=True)


def prune_checkpoints(checkpoint_dir: Path, keep_last: int) -> None:
    """Delete all but the newest ``keep_last`` step checkpoints; the one named by ``latest`` is
    always kept."""
    latest = (checkpoint_dir / LATEST).read_text().strip()
    tags = sorted((p for p in checkpoint_dir.glob("step*") if p.is_dir()), key=lambda p: int(p.name[4:]))
    for old in tags[: max(len(tags) - keep_last, 0)]:
        if old.name != latest:
            shutil.rmtree(old)


def resolve_resume(path: Path, auto: bool) -> tuple[Path, str] | None:
    """(checkpoints directory, tag) to resume from: ``latest`` of a checkpoints directory, or one
    tag directory. With ``auto``, None when the run has no complete checkpoint yet."""
    if (path / LATEST).is_file():
        tag = (path / LATEST).read_text().strip()
        if not (path / tag).is_dir():
            raise FileNotFoundError(f"{path / LATEST} names {tag}, which is not in {path}")
        return path, tag
    if path.is_dir() and any(path.glob("mp_rank_*_model_states.pt")):
        return path.parent, path.name
    if auto:
        return None
    raise FileNotFoundError(
        f"--resume {path}: expected a checkpoints directory with a 'latest' file or one checkpoint tag directory"
    )


def all_finite(module: torch.nn.Module) -> bool:
    """Whether every trainable parameter is finite on every rank."""
    parameters = [p for p in module.parameters() if p.requires_grad]
    device = parameters[0].device if parameters else torch.device("cpu")
    bad = torch.zeros((), device=device)
    for parameter in parameters:
        bad = torch.maximum(bad, (~torch.isfinite(parameter)).any().to(bad.dtype))
    if dist.is_initialized():
        dist.all_reduce(bad, op=dist.ReduceOp.MAX)
    return not bool(bad)
