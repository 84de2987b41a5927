"""The training benchmark times the DeepSpeed engine that train.py steps: its flags reach the
engine's config, its optimizer memory is read where DeepSpeed keeps the states, and the phase mark
between the backward and the engine's step leaves ``backward_and_step`` as it is."""

import pytest
import torch

from gsva.bench.train_step import before_engine_step, engine_config, optimizer_chain, optimizer_memory, parse_args
from gsva.config import Config, OptimConfig
from gsva.engine.distributed import init_distributed
from gsva.engine.trainer import backward_and_step, build_engine, deepspeed_config


def test_flags_reach_the_engine_config():
    args = parse_args(["--grad-clip", "0", "--zero-stage", "1", "--precision", "bf16", "--images-per-step", "3"])
    cfg = Config()
    cfg.model.precision = args.precision
    config = deepspeed_config(engine_config(cfg, args.images_per_step[0], args.grad_clip, args.zero_stage), torch.device("cpu"))
    assert config["gradient_clipping"] == 0.0 and config["zero_optimization"]["stage"] == 1
    assert config["gradient_accumulation_steps"] == 1 and config["train_micro_batch_size_per_gpu"] == 3
    assert config["bf16"]["enabled"] and not config["fp16"]["enabled"]
    defaults = parse_args([])
    assert (defaults.grad_clip, defaults.zero_stage) == (OptimConfig().grad_clip, OptimConfig().zero_stage) == (1.0, 2)


def test_fp16_on_the_cpu_is_refused(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--precision", "fp16"])
    assert "--precision fp16 needs --device cuda" in capsys.readouterr().err


@pytest.fixture(scope="module")
def device() -> torch.device:
    return init_distributed()


@pytest.mark.parametrize("stage, master_bytes_per_weight", [(0, 0), (2, 4)])
def test_optimizer_memory_is_read_from_the_engine(device, stage, master_bytes_per_weight):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.Linear(8, 4))
    cfg = Config()
    cfg.model.precision = "fp32"
    engine = build_engine(model, engine_config(cfg, 2, 1.0, stage), device, lambda _step: 1.0)
    try:
        assert isinstance(optimizer_chain(engine)[-1], torch.optim.AdamW)
        marks: list[bool] = []
        with before_engine_step(engine, lambda: marks.append(engine.global_steps == 0)):
            assert backward_and_step(engine, engine(torch.randn(2, 16)).square().sum())
        assert marks == [True] and engine.global_steps == 1 and "step" not in vars(engine)
        weights = sum(p.numel() for p in model.parameters())
        held = optimizer_memory(engine, model)
        assert held["master_weights"] == master_bytes_per_weight * weights
        step_counts = held["states"] - 8 * weights  # two fp32 moments per weight, plus the step counters
        assert 0 <= step_counts <= 4 * 8
    finally:
        engine.destroy()
