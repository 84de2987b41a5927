"""A short DeepSpeed training run on the tiny set: the loss falls, the trained model beats the
untrained one, and eval.py reproduces the end-of-training metrics from the saved weights."""

import json
import subprocess
import sys

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from gsva.engine.trainer import train
from gsva.evaluation.benchmarks import parse_benchmark
from gsva.evaluation.report import evaluate_benchmark
from gsva.config import EvalConfig
from gsva.evaluation.settings import EvalSettings
from gsva.pipeline import build_pipeline
from tests.conftest import REPO, child_environment, tiny_config

pytestmark = pytest.mark.slow


def test_train_then_eval(synthetic_root, tokenizer_dir, tmp_path):
    cfg = tiny_config(
        synthetic_root, tokenizer_dir,
        f"run.output_dir={tmp_path / 'run'}", "schedule.steps=60", "run.log_every=5", "eval.every=30",
        "eval.visualize=2", "optim.micro_batch_size=4", "optim.warmup_steps=5", "optim.lr=2e-3",
    )
    torch.manual_seed(0)
    pipeline = build_pipeline(cfg)
    result = train(cfg)
    history = result.history
    assert history[-1]["total"] < 0.6 * history[0]["total"]
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard")).Reload()
    assert [event.step for event in events.Scalars("eval_grefcoco:val/giou")] == [30, 60]

    trained_report = result.evaluations["grefcoco:val"]
    untrained_report = evaluate_benchmark(
        pipeline.model, pipeline.builder, parse_benchmark("grefcoco:val"), cfg.data.dataset_dir, EvalSettings(EvalConfig(batch_size=4)), result.device
    )
    assert trained_report["metrics"]["gres"]["giou"] > untrained_report["metrics"]["gres"]["giou"] + 0.1
    assert len(list((tmp_path / "run" / "eval" / "grefcoco_val_teacher-forced_gsva" / "overlays").glob("*.png"))) == 2
    assert (tmp_path / "run" / "config.yaml").is_file()  # the resolved config, written at launch

    command = [
        sys.executable, "eval.py", "--weights", str(result.weights), "--benchmark", "grefcoco:val",
        "--output-dir", str(tmp_path / "reeval"), "--batch-size", "3", "--num-workers", "0",
    ]
    result = subprocess.run(command, cwd=REPO, env=child_environment(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    output = tmp_path / "reeval" / "grefcoco_val_teacher-forced_gsva"
    reproduced = json.loads((output / "metrics.json").read_text())
    for variant in ("gres", "gsva"):
        for key, value in trained_report["metrics"][variant].items():
            assert reproduced["metrics"][variant][key] == pytest.approx(value, abs=1e-6), (variant, key)
    lines = (output / "records.jsonl").read_text().splitlines()
    assert len(lines) == reproduced["num_records"] == trained_report["num_records"]
