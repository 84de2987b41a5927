"""Count the tensor operations that make the host wait for the device, with the line that asked.

On a GPU, reading a device value back (``.item()``, ``bool(t)``, ``.tolist()``, ``.nonzero()``,
boolean-mask indexing, ``.cpu()``, ...) stalls the Python thread until every queued kernel has run,
so the next kernels are launched late and the GPU idles. ``HostSyncCounter`` is a
``TorchFunctionMode`` that records every such call made under it, on any device (so a CPU test
finds the calls that would synchronise on a GPU), keyed by operation and by the first source line
outside torch. Autograd's backward runs in C++ and is not seen.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

ALWAYS_SYNCING = frozenset(
    {"item", "tolist", "__bool__", "__int__", "__float__", "__index__", "nonzero", "argwhere", "cpu", "numpy",
      "masked_select", "unique", "unique_consecutive", "bincount"}
)
"""Operations whose output (or result size) depends on device values the host must read
(``cpu`` is counted even on a CPU tensor: it states the intent to read back)."""
TORCH_DIR = str(Path(torch.__file__).resolve().parent)


def _is_mask(index: Any) -> bool:
    if isinstance(index, torch.Tensor):
        return index.dtype in (torch.bool, torch.uint8)
    if isinstance(index, (tuple, list)):
        return any(_is_mask(part) for part in index)
    return False


def _to_host(args: tuple, kwargs: dict) -> bool:
    """A device tensor moved to the CPU (a CPU tensor's ``.to("cpu")`` is a no-op)."""
    if not isinstance(args[0], torch.Tensor) or args[0].device.type == "cpu":
        return False
    targets = [*args[1:], kwargs.get("device")]
    return any(str(target).startswith("cpu") for target in targets if isinstance(target, (str, torch.device)))


def syncs(name: str, args: tuple, kwargs: dict) -> bool:
    """Whether call ``name(*args, **kwargs)`` reads a device value back to the host."""
    if name in ALWAYS_SYNCING:
        return True
    if name == "__getitem__":
        return _is_mask(args[1])
    if name == "repeat_interleave":
        return "output_size" not in kwargs and isinstance(args[1] if len(args) > 1 else kwargs.get("repeats"), torch.Tensor)
    if name == "to":
        return _to_host(args, kwargs)
    return False


def python_site(skip: tuple[str, ...] = ()) -> str:
    """``path:line`` of the innermost Python frame outside torch, this module and the ``skip``
    files ("<no Python frame>" from the autograd engine's own threads)."""
    frame = sys._getframe(1)
    while frame is not None:
        path = frame.f_code.co_filename
        if not path.startswith(TORCH_DIR) and path != __file__ and path not in skip:
            return f"{path}:{frame.f_lineno}"
        frame = frame.f_back
    return "<no Python frame>"


class HostSyncCounter(TorchFunctionMode):
    """``with HostSyncCounter() as counter: ...`` then ``counter.events`` maps
    (operation, "path:line") to the number of calls."""

    def __init__(self) -> None:
        super().__init__()
        self.events: Counter[tuple[str, str]] = Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if syncs(name, args, kwargs):
            self.events[(name, python_site())] += 1
        return func(*args, **kwargs)

    @property
    def total(self) -> int:
        return sum(self.events.values())

    def from_files_under(self, directory: Path | str) -> Counter[tuple[str, str]]:
        """The events whose source line lies under ``directory``."""
        root = str(Path(directory).resolve())
        return Counter({event: count for event, count in self.events.items() if event[1].startswith(root)})

    def by_package(self) -> dict[str, int]:
        """Counts per top-level package of the asking line (``gsva``, ``transformers``, ...)."""
        totals: Counter[str] = Counter()
        for (_, origin), count in self.events.items():
            parts = Path(origin.rsplit(":", 1)[0]).parts
            package = next((part for part in ("gsva", "transformers", "peft", "segment_anything", "deepspeed") if part in parts), "other")
            totals[package] += count
        return dict(totals)
