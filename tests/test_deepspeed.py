"""Real multi-rank DeepSpeed ZeRO-2 on the CPU (gloo): train, checkpoint, resume exactly."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, child_environment, free_port

pytestmark = pytest.mark.slow

DEEPSPEED = shutil.which("deepspeed") or str(Path(sys.executable).parent / "deepspeed")


def launch(output_dir: Path, work: Path, *extra: str) -> subprocess.CompletedProcess:
    overrides = [
        f"data.dataset_dir={work / 'data'}",
        "data.synthetic.num_images.train=40",
        "data.synthetic.num_images.val=8",
        "data.synthetic.num_images.testA=4",
        "data.synthetic.num_images.testB=4",
        f"components.output_dir={work / 'components'}",
        "components.sam_steps=5",
        "components.clip_steps=5",
        "components.llava_steps=5",
        "components.min_sam_iou=0",  # 5-step components test the plumbing, not their quality
        "components.min_clip_patch_accuracy=0",
        "components.min_clip_image_accuracy=0",
        "components.min_checklist_accuracy=0",
        "schedule.steps=4",
        "schedule.save_every=2",
        "schedule.keep_last=2",
        "run.log_every=1",
        "optim.micro_batch_size=2",
        f"run.output_dir={output_dir}",
    ]
    launcher = [DEEPSPEED, "--num_gpus", "2", "--master_port", str(free_port())]
    command = [*launcher, "train.py", "--no-eval", *extra, *overrides]
    environment = child_environment(DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1")
    result = subprocess.run(command, cwd=REPO, env=environment, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def history(output_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (output_dir / "history.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def two_rank_run(tmp_path_factory) -> tuple[Path, Path]:
    """(output dir, work dir) of a 4-step 2-rank run with checkpoints at steps 2 and 4."""
    work = tmp_path_factory.mktemp("two_rank")
    launch(work / "full", work)
    return work / "full", work


def test_two_rank_zero2_checkpoint_and_exact_resume(two_rank_run):
    full, work = two_rank_run
    checkpoints = full / "checkpoints"
    assert (checkpoints / "latest").read_text().strip() == "step4"
    assert sorted(p.name for p in checkpoints.glob("step*")) == ["step2", "step4"]
    for tag in ("step2", "step4"):
        # ZeRO-2 partitions the optimizer state: one shard per rank.
        assert len(list((checkpoints / tag).glob("*zero_pp_rank_*optim_states.pt"))) == 2
    assert (full / "final" / "model.safetensors").is_file()
    uninterrupted = history(full)
    assert [record["step"] for record in uninterrupted] == [1, 2, 3, 4]

    resumed_dir = work / "resumed"
    result = launch(resumed_dir, work, "--resume", str(checkpoints / "step2"))
    assert "at optimizer step 2" in result.stdout + result.stderr
    resumed = history(resumed_dir)
    assert [record["step"] for record in resumed] == [3, 4]
    for before, after in zip(uninterrupted[2:], resumed):
        for key in ("total", "ce", "bce", "dice", "lr"):
            assert after[key] == pytest.approx(before[key], rel=1e-6, abs=1e-7), key


def test_two_rank_evaluation_equals_one_rank(two_rank_run, tmp_path):
    """Images sharded over 2 CPU ranks: every expression scored once, metrics exactly as 1 rank."""
    weights = two_rank_run[0] / "final"
    environment = child_environment(DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1")
    common = ["eval.py", "--weights", str(weights), "--benchmark", "grefcoco:val", "--num-workers", "0"]
    runs = {
        "one": [sys.executable, *common, "--batch-size", "3", "--output-dir", str(tmp_path / "one")],
        "two": [
            DEEPSPEED, "--num_gpus", "2", "--master_port", str(free_port()), *common,
            "--batch-size", "2", "--output-dir", str(tmp_path / "two"),
        ],
    }
    for name, command in runs.items():
        result = subprocess.run(command, cwd=REPO, env=environment, capture_output=True, text=True, timeout=1200)
        assert result.returncode == 0, name + result.stdout[-3000:] + result.stderr[-3000:]
    folder = "grefcoco_val_teacher-forced_gsva"
    one, two = (json.loads((tmp_path / name / folder / "metrics.json").read_text()) for name in runs)
    assert one["metrics"] == two["metrics"] and one["num_records"] == two["num_records"] > 0
    records = [(tmp_path / name / folder / "records.jsonl").read_text() for name in runs]
    assert records[0] == records[1]
