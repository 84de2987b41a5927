"""Where this process stands in the process group, and the collective calls that evaluation and
training share. Without a process group (a plain ``python`` run before ``init_distributed``, or
a tool that never starts one) the process is rank 0 of a world of 1.

The group itself is started by ``gsva.engine.distributed.init_distributed``.
"""

from __future__ import annotations

from typing import Any

import torch.distributed as dist


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if dist.is_initialized() and world_size() > 1:
        dist.barrier()


def gather_objects(items: list[Any]) -> list[Any]:
    """Concatenate every rank's list on every rank (order: rank 0's items first)."""
    if not dist.is_initialized() or world_size() == 1:
        return list(items)
    gathered: list[list[Any]] = [[] for _ in range(world_size())]
    dist.all_gather_object(gathered, items)
    return [item for part in gathered for item in part]
