"""The training log's records: rates per step of the window they cover, and fractions of the
micro-steps that were trained."""

import json
import time
from types import SimpleNamespace

import pytest
import torch

from gsva.config import load_config
from gsva.engine.trainer import LogWindow, log_step


class RecordingEngine:
    """The two engine reads ``log_step`` makes."""

    def get_lr(self) -> list[float]:
        return [1e-3]

    def get_global_grad_norm(self) -> float:
        return 2.0


def _losses(value: float) -> SimpleNamespace:
    return SimpleNamespace(**{key: torch.tensor(value) for key in ("total", "ce", "bce", "dice")})


def test_a_short_last_window_gives_rates_per_step_it_covers(tmp_path):
    """The run's last record covers 3 steps although ``run.log_every`` is 10."""
    cfg = load_config(None, ["model.sam_type=tiny", "run.log_every=10", "optim.grad_accum_steps=2", "optim.micro_batch_size=3"])
    window = LogWindow(start_step=20, started=time.time() - 6.0)
    for micro_step in range(3 * 2):
        window.add(_losses(float(micro_step)), cached=micro_step % 2 == 0)
    record = log_step(RecordingEngine(), cfg, 23, window, None, tmp_path)
    assert record["seconds_per_step"] == pytest.approx(2.0, rel=0.05)
    assert record["samples_per_second"] == pytest.approx(3 * 2 * 3 / 6.0, rel=0.05)
    assert record["cached_batch_fraction"] == 0.5 and record["total"] == pytest.approx(2.5)
    assert json.loads((tmp_path / "history.jsonl").read_text()) == record


def test_only_trained_micro_steps_enter_the_window():
    """A micro-step skipped for a non-finite loss is never added, so the cached fraction of the
    trained ones stays within [0, 1]."""
    window = LogWindow(start_step=0)
    window.add(_losses(1.0), cached=True)
    assert window.cached_batches == 1 and len(window.losses["total"]) == 1
