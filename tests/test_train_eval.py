"""A short DeepSpeed training run on the tiny set: the loss falls, the trained model beats the
untrained one, and eval.py reproduces the end-of-training metrics from the saved weights."""

import json
import os
import subprocess
import sys

import pytest
import torch

from gsva.data.refer import ReferIndex
from gsva.data.sample_builder import SampleBuilder
from gsva.engine.evaluator import EvalSettings
from gsva.engine.report import evaluate_split
from gsva.engine.trainer import sample_settings, train
from gsva.model.build import build_gsva
from tests.conftest import REPO, tiny_config

pytestmark = pytest.mark.slow


def test_train_then_eval(synthetic_root, tokenizer_dir, tmp_path):
    cfg = tiny_config(
        synthetic_root, tokenizer_dir,
        f"run.output_dir={tmp_path / 'run'}", "schedule.steps=60", "run.log_every=5",
        "optim.micro_batch_size=4", "optim.warmup_steps=5", "optim.lr=2e-3",
    )
    torch.manual_seed(0)
    tokenizer, untrained, prompts = build_gsva(cfg)
    result = train(cfg)
    history = result.history
    assert history[-1]["total"] < 0.6 * history[0]["total"]
    assert (tmp_path / "run" / "tensorboard").is_dir()

    settings = EvalSettings(batch_size=4, output_dir=str(tmp_path / "eval"), visualize=2)
    index = ReferIndex(cfg.data.dataset_dir, cfg.data.eval_dataset)
    trained_builder = SampleBuilder(result.tokenizer, result.prompts, sample_settings(cfg))
    trained_report = evaluate_split(result.model, trained_builder, index, "val", settings, result.device)
    untrained_builder = SampleBuilder(tokenizer, prompts, sample_settings(cfg))
    untrained_report = evaluate_split(untrained, untrained_builder, index, "val", EvalSettings(batch_size=4), result.device)
    assert trained_report["metrics"]["gres"]["giou"] > untrained_report["metrics"]["gres"]["giou"] + 0.1
    assert len(list((tmp_path / "eval" / "overlays").glob("*.png"))) == 2

    command = [
        sys.executable, "eval.py", "--weights", str(result.weights), "--split", "val",
        "--output-dir", str(tmp_path / "reeval"), "--batch-size", "4",
    ]
    # A fresh process: without the rendezvous variables this test process set for itself.
    environment = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    result = subprocess.run(command, cwd=REPO, env=environment, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    reproduced = json.loads((tmp_path / "reeval" / "metrics.json").read_text())
    for variant in ("gres", "gsva"):
        for key, value in trained_report["metrics"][variant].items():
            assert reproduced["metrics"][variant][key] == pytest.approx(value, abs=1e-6), (variant, key)
    lines = (tmp_path / "reeval" / "records.jsonl").read_text().splitlines()
    assert len(lines) == reproduced["num_expressions"] == trained_report["num_expressions"]
