"""Faults injected into real training runs: SIGKILL (also while a checkpoint is being written),
preemption signals, non-finite losses and weights. Resumed runs must match an uninterrupted one."""

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from gsva.engine import trainer
from gsva.model.gsva import GsvaLosses, GsvaModel
from tests.conftest import REPO, child_environment, free_port, tiny_config

pytestmark = pytest.mark.slow

DEEPSPEED = shutil.which("deepspeed") or str(Path(sys.executable).parent / "deepspeed")
STEPS = 8


def command(ranks: int, output_dir: Path, synthetic_root: Path, tokenizer_dir: Path, *extra: str) -> list[str]:
    """train.py for ``ranks`` CPU ranks: LoRA with dropout (so the RNG state matters), 8 steps,
    a checkpoint every 2."""
    launcher = [sys.executable, "train.py"]
    if ranks > 1:
        launcher = [DEEPSPEED, "--num_gpus", str(ranks), "--master_port", str(free_port()), "train.py"]
    return [
        *launcher, "--no-eval", *extra,
        f"data.dataset_dir={synthetic_root}", "data.synthetic=null", f"model.tokenizer_path={tokenizer_dir}",
        "components.enabled=false", "model.finetune=lora", "model.lora_r=4", "model.lora_dropout=0.2", f"schedule.steps={STEPS}",
        "schedule.save_every=2", "schedule.keep_last=2", "run.log_every=1", "optim.micro_batch_size=2",
        f"run.output_dir={output_dir}",
    ]


def environment() -> dict[str, str]:
    return child_environment(DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1")


def run(arguments: list[str]) -> subprocess.CompletedProcess:
    done = subprocess.run(arguments, cwd=REPO, env=environment(), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def start(arguments: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        arguments, cwd=REPO, env=environment(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )


def wait_for(condition, process: subprocess.Popen, what: str, timeout: float = 600) -> None:
    deadline = time.time() + timeout
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"the run ended before {what}: {process.stderr.read()[-3000:]}")
        if time.time() > deadline:
            os.killpg(process.pid, signal.SIGKILL)
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def losses_by_step(output_dir: Path) -> dict[int, dict]:
    """The last record of each step in history.jsonl (a resumed run appends its own)."""
    import json

    return {record["step"]: record for record in map(json.loads, (output_dir / "history.jsonl").read_text().splitlines())}


def assert_same_run(resumed_dir: Path, reference_dir: Path) -> None:
    resumed, reference = losses_by_step(resumed_dir), losses_by_step(reference_dir)
    assert sorted(resumed) == list(range(1, STEPS + 1))
    for step in range(1, STEPS + 1):
        for key in ("total", "ce", "bce", "dice", "lr"):
            assert resumed[step][key] == pytest.approx(reference[step][key], rel=1e-6, abs=1e-7), (step, key)
    ours, theirs = (load_file(path / "final" / "model.safetensors") for path in (resumed_dir, reference_dir))
    assert ours.keys() == theirs.keys()
    for name in ours:
        assert torch.equal(ours[name], theirs[name]), name


@pytest.fixture(scope="module", params=[1, 2], ids=["1rank", "2ranks"])
def reference(request, synthetic_root, tokenizer_dir, tmp_path_factory):
    """(ranks, output dir of an uninterrupted run)."""
    output_dir = tmp_path_factory.mktemp(f"reference{request.param}") / "run"
    run(command(request.param, output_dir, synthetic_root, tokenizer_dir))
    return request.param, output_dir


def test_sigkill_while_writing_a_checkpoint_then_resume_auto(reference, synthetic_root, tokenizer_dir, tmp_path):
    ranks, reference_dir = reference
    output_dir = tmp_path / "run"
    arguments = command(ranks, output_dir, synthetic_root, tokenizer_dir, "--resume", "auto")
    process = start(arguments)
    half_written = output_dir / "checkpoints" / ".staging-step6" / "step6" / "mp_rank_00_model_states.pt"
    wait_for(half_written.exists, process, "the step-6 checkpoint being written")
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    checkpoints = output_dir / "checkpoints"
    assert (checkpoints / "latest").read_text() == "step4"  # the half-written step 6 is never named
    assert not (checkpoints / "step6").exists()
    run(arguments)  # --resume auto: continues from step 4, removes the leftover staging folder
    assert not list(checkpoints.glob(".staging-*"))
    assert (checkpoints / "latest").read_text() == f"step{STEPS}"
    assert_same_run(output_dir, reference_dir)


def test_preemption_signal_saves_exits_zero_and_resumes(reference, synthetic_root, tokenizer_dir, tmp_path):
    """SIGUSR1 to ONE rank: every rank stops at the same step boundary after saving."""
    ranks, reference_dir = reference
    output_dir = tmp_path / "run"
    arguments = command(ranks, output_dir, synthetic_root, tokenizer_dir, "--resume", "auto")
    process = start(arguments)
    history = output_dir / "history.jsonl"
    wait_for(lambda: history.is_file() and len(history.read_text().splitlines()) >= 3, process, "step 3")
    os.kill(rank_pid(process, ranks - 1), signal.SIGUSR1)
    _, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr[-3000:]
    assert "--resume auto" in stderr
    stopped_at = (output_dir / "checkpoints" / "latest").read_text()
    assert 3 <= int(stopped_at[4:]) < STEPS
    assert not (output_dir / "final").exists()
    run(arguments)
    assert_same_run(output_dir, reference_dir)


def rank_pid(process: subprocess.Popen, rank: int) -> int:
    """The process of training rank ``rank`` (the launcher's grandchild with 2 ranks)."""
    if rank == 0 and process.args[1] == "train.py":
        return process.pid
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            arguments = (entry / "cmdline").read_bytes().split(b"\0")
            session = os.getsid(int(entry.name))
        except (OSError, ProcessLookupError):
            continue
        if session == process.pid and b"train.py" in arguments and f"--local_rank={rank}".encode() in arguments:
            return int(entry.name)
    raise AssertionError(f"no process of rank {rank} found")


# ----------------------------------------------------------------- non-finite losses (in-process)
def poisoned_forward(calls_to_poison: set[int]):
    """GsvaModel.forward whose total loss is NaN at the given (1-based) calls."""
    original = GsvaModel.forward
    calls = {"count": 0}

    def forward(self, batch):
        losses = original(self, batch)
        calls["count"] += 1
        if calls["count"] in calls_to_poison:
            return GsvaLosses(total=losses.total * float("nan"), ce=losses.ce, bce=losses.bce, dice=losses.dice)
        return losses

    return forward


def test_non_finite_losses_are_skipped_and_counted(synthetic_root, tokenizer_dir, tmp_path, monkeypatch, caplog):
    cfg = tiny_config(
        synthetic_root, tokenizer_dir, f"run.output_dir={tmp_path / 'run'}", "schedule.steps=6", "schedule.save_every=2",
        "run.log_every=1", "eval.at_end=false", "optim.micro_batch_size=2", "optim.max_consecutive_nonfinite=3",
    )
    monkeypatch.setattr(GsvaModel, "forward", poisoned_forward({2, 3}))
    added = []
    original_add = trainer.LogWindow.add
    monkeypatch.setattr(trainer.LogWindow, "add", lambda window, losses, cached: added.append(cached) or original_add(window, losses, cached))
    result = trainer.train(cfg)
    assert result.steps == 6  # two skipped micro-steps, then six optimizer steps all the same
    assert len(added) == 6  # the skipped micro-steps never enter the logged window
    assert caplog.text.count("non-finite loss, step skipped") == 2
    for parameter in result.model.parameters():
        assert torch.isfinite(parameter).all()


def test_too_many_non_finite_losses_abort_without_saving_them(synthetic_root, tokenizer_dir, tmp_path, monkeypatch):
    cfg = tiny_config(
        synthetic_root, tokenizer_dir, f"run.output_dir={tmp_path / 'run'}", "schedule.steps=6", "schedule.save_every=2",
        "run.log_every=1", "eval.at_end=false", "optim.micro_batch_size=2", "optim.max_consecutive_nonfinite=3",
    )
    monkeypatch.setattr(GsvaModel, "forward", poisoned_forward({3, 4, 5}))
    with pytest.raises(FloatingPointError, match=r"optim\.max_consecutive_nonfinite"):
        trainer.train(cfg)
    assert (tmp_path / "run" / "checkpoints" / "latest").read_text() == "step2"


def test_non_finite_weights_are_never_saved(synthetic_root, tokenizer_dir, tmp_path, monkeypatch):
    """An update that leaves an infinite weight (finite losses): the step-4 save is refused and
    the step-2 checkpoint stays the latest."""
    from deepspeed.runtime.engine import DeepSpeedEngine

    cfg = tiny_config(
        synthetic_root, tokenizer_dir, f"run.output_dir={tmp_path / 'run'}", "schedule.steps=6", "schedule.save_every=2",
        "run.log_every=1", "eval.at_end=false", "optim.micro_batch_size=2",
    )
    original = DeepSpeedEngine.step
    calls = {"count": 0}

    def step(self, *args, **kwargs):
        original(self, *args, **kwargs)
        calls["count"] += 1
        if calls["count"] == 4:
            with torch.no_grad():
                self.module.query_projector[0].weight[0, 0] = float("inf")

    monkeypatch.setattr(DeepSpeedEngine, "step", step)
    checkpoints = tmp_path / "run" / "checkpoints"
    with pytest.raises(FloatingPointError, match=re.escape(str(checkpoints))):
        trainer.train(cfg)
    assert (checkpoints / "latest").read_text() == "step2"
    assert not (checkpoints / "step4").exists()


# ----------------------------------------------------------------- bad samples in a real run
@pytest.fixture
def data_with_a_corrupt_image(synthetic_root, tmp_path) -> tuple[Path, Path]:
    """A copy of the synthetic set with one training image cut to 40 bytes; (root, that image)."""
    import json

    root = tmp_path / "data"
    shutil.copytree(synthetic_root, root)
    instances = json.loads((root / "refer_seg" / "grefcoco" / "instances.json").read_text())
    corrupt = next((root / "refer_seg" / "images").rglob(instances["images"][0]["file_name"]))
    corrupt.write_bytes(corrupt.read_bytes()[:40])
    return root, corrupt


def test_bad_samples_are_skipped_logged_and_bounded(data_with_a_corrupt_image, tokenizer_dir, tmp_path, caplog):
    root, corrupt = data_with_a_corrupt_image
    overrides = (
        "schedule.mode=epochs", "schedule.epochs=1", "schedule.save_every=1000", "run.log_every=1",
        "eval.at_end=false", "optim.micro_batch_size=4", "data.on_bad_sample=skip",
    )
    cfg = tiny_config(root, tokenizer_dir, f"run.output_dir={tmp_path / 'run'}", *overrides)
    trainer.train(cfg)  # one full pass meets the corrupt image once, replaced by another
    assert f"skipped a bad sample: {corrupt}" in caplog.text
    assert "1 bad sample" in caplog.text  # the end-of-training summary
    strict = tiny_config(root, tokenizer_dir, f"run.output_dir={tmp_path / 'strict'}", *overrides, "data.max_bad_samples=0")
    with pytest.raises(RuntimeError, match="data.max_bad_samples=0"):
        trainer.train(strict)
    failing = tiny_config(root, tokenizer_dir, f"run.output_dir={tmp_path / 'error'}", *overrides[:-1])
    with pytest.raises(ValueError, match=corrupt.name):
        trainer.train(failing)
