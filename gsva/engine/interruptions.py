"""Preemption signals and non-finite losses, agreed on by every rank at step boundaries.

SIGTERM (what schedulers send before killing a job) and SIGUSR1 only set a flag; the training
loop reads it together with the loss's finiteness in ONE all-reduce per micro-step, so every rank
takes the same decision at the same step: save and exit 0, or skip the step.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

import torch
import torch.distributed as dist

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class StopRequest:
    """``with StopRequest() as stop``: while inside, SIGTERM/SIGUSR1 only set ``stop.signal_name``
    (the previous handlers come back on exit). Outside the main thread no handler can be set and
    the signals keep their default effect."""

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            self._previous = {number: signal.signal(number, self._record) for number in STOP_SIGNALS}
        return self

    def __exit__(self, *exc_info: object) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)

    def _record(self, number: int, frame: FrameType | None) -> None:
        self.signal_name = signal.Signals(number).name

    @property
    def requested(self) -> bool:
        return self.signal_name is not None


def agree(loss: torch.Tensor, stop_requested: bool) -> tuple[bool, bool]:
    """(loss finite on every rank, stop requested on some rank): one all-reduce, one read-back."""
    flags = torch.stack([(~torch.isfinite(loss.detach())).float(), loss.new_full((), float(stop_requested), dtype=torch.float32)])
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    nonfinite, stop = flags.tolist()
    return not nonfinite, bool(stop)


class NonFiniteGuard:
    """Counts skipped steps; raises after ``limit`` non-finite losses in a row."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_a_row = 0
        self.skipped = 0

    def record(self, finite: bool, micro_step: int) -> None:
        if finite:
            self.in_a_row = 0
            return
        self.in_a_row += 1
        self.skipped += 1
        if self.in_a_row >= self.limit:
            raise FloatingPointError(
                f"the loss was not finite at {self.in_a_row} micro-steps in a row (the last: micro-step "
                f"{micro_step}); {self.skipped} skipped in all. Nothing of these steps was applied or "
                "saved: resume from the last checkpoint with a lower optim.lr, or check the data "
                "(scripts/check_data.py); optim.max_consecutive_nonfinite sets the limit"
            )
