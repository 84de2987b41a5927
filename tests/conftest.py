"""Shared fixtures: a tiny synthetic gRefCOCO set, a locally trained tokenizer, tiny configs, and
a demo model trained by a shortened demo recipe."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from gsva.config import Config, load_config
from gsva.demo.synthetic import COLOURS, SyntheticSpec, write_synthetic_grefcoco
from gsva.text.tokenizer import train_tiny_bpe
from gsva.demo.components import tokenizer_corpus

REPO = Path(__file__).resolve().parents[1]
TINY_CONFIG = REPO / "configs" / "tiny_synthetic.yaml"

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    write_synthetic_grefcoco(root, SyntheticSpec(num_images={"train": 32, "val": 8, "testA": 4, "testB": 4}))
    return root


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("tokenizer")
    train_tiny_bpe(tokenizer_corpus(list(COLOURS), "llava_v1"), 512, directory)
    return directory


RENDEZVOUS_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def free_port() -> int:
    """A TCP port free now, for a multi-rank launch (two launches on the default port collide)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def child_environment(**extra: str) -> dict[str, str]:
    """The environment for a child process: without the rendezvous variables that an in-process
    training run of an earlier test set for itself (a child would join that process group)."""
    inherited = {key: value for key, value in os.environ.items() if key not in RENDEZVOUS_VARIABLES}
    return {**inherited, **extra}


def tiny_config(synthetic_root: Path, tokenizer_dir: Path, *overrides: str) -> Config:
    """The demo config on the test dataset, with random tiny components (no pretraining)."""
    return load_config(
        TINY_CONFIG,
        [
            f"data.dataset_dir={synthetic_root}",
            "data.synthetic=null",
            f"model.tokenizer_path={tokenizer_dir}",
            "components.enabled=false",
            *overrides,
        ],
    )


@pytest.fixture
def config(synthetic_root, tokenizer_dir) -> Config:
    return tiny_config(synthetic_root, tokenizer_dir)


COMPONENT_CHECKS = (
    # (stage, its steps key, the floor key, the held-out measurement it logs and names when it stops)
    ("SAM", "sam_steps", "min_sam_iou", "colour-prompt mask IoU"),
    ("CLIP", "clip_steps", "min_clip_patch_accuracy", "per-patch colour accuracy"),
    ("CLIP", "clip_steps", "min_clip_image_accuracy", "image colour accuracy read from each patch"),
    ("LLaVA", "llava_steps", "min_checklist_accuracy", r"checklist accuracy \(mean of present and absent colours\)"),
)
"""The held-out checks of the demo's component stages under ``components.*`` (measurements as
regular expressions)."""


SHORT_DEMO_RECIPE = (
    "data.synthetic.num_images={train: 800, val: 40, testA: 0, testB: 0}",
    "components.sam_steps=200",
    "components.min_sam_iou=0",
    "components.min_clip_patch_accuracy=0",
    "components.min_clip_image_accuracy=0",
    "components.min_checklist_accuracy=0",
    "schedule.steps=400",
)
SHORT_DEMO_SEEDS = (0, 1)
"""Overrides of configs/tiny_synthetic.yaml that shorten `python train.py` to a few minutes on a
2-core CPU while the model still tells present from absent colours: fewer images, half the SAM
pretraining (held-out IoU 0.89), 400 GSVA steps, and the CLIP and LLaVA stages whole (at 600
LLaVA steps one seed in six was still at a held-out checklist accuracy of 0.70, and on such a
component GSVA learns to say [SEG] to everything). The quality floors are off: a shortened stage
must never stop the run (the tests read the stages' measurements from its log instead)."""


@dataclass
class DemoRun:
    folder: Path
    """``run.output_dir`` of the run: ``final/``, ``eval/``, ``config.yaml``, …"""
    log: str
    """What ``train.py`` logged (the component stages' held-out measurements among it)."""


class ShortDemoRuns:
    """``python train.py`` with ``SHORT_DEMO_RECIPE`` for each of ``SHORT_DEMO_SEEDS``, all started
    together on the first request (one thread each, so two runs share the two cores) and run once
    per test session, each in its own folder (dataset, components, outputs, ``train.log``).

    ``release()`` trains the same shortened demo with the release preset
    (``configs/tiny_synthetic_release.yaml``) once the first seed's run is done, on that run's
    dataset and components."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.processes: dict[str, subprocess.Popen] = {}
        self.runs: dict[str, DemoRun] = {}

    def _launch(self, name: str, config: str, seed: int, *overrides: str) -> None:
        folder = self.root / name
        folder.mkdir(parents=True)
        command = [
            sys.executable, "train.py", "--config", config,
            f"run.output_dir={folder / 'run'}", f"run.seed={seed}", *SHORT_DEMO_RECIPE, *overrides,
        ]
        with (folder / "train.log").open("w") as log:  # a file, not a pipe: neither run waits on a reader
            self.processes[name] = subprocess.Popen(
                command, cwd=REPO, env=child_environment(OMP_NUM_THREADS="1"), stdout=log, stderr=subprocess.STDOUT
            )

    def _start(self) -> None:
        for seed in SHORT_DEMO_SEEDS:
            folder = self.root / f"seed{seed}"
            self._launch(f"seed{seed}", str(TINY_CONFIG), seed, f"data.dataset_dir={folder / 'data'}", f"components.output_dir={folder / 'components'}")

    def _wait(self, name: str) -> DemoRun:
        if name not in self.runs:
            folder = self.root / name
            returncode = self.processes[name].wait(timeout=1500)
            log = (folder / "train.log").read_text()
            assert returncode == 0, f"training the demo model ({name}) failed:\n{log[-4000:]}"
            self.runs[name] = DemoRun(folder / "run", log)
        return self.runs[name]

    def __call__(self, seed: int) -> DemoRun:
        if not self.processes:
            self._start()
        return self._wait(f"seed{seed}")

    def release(self) -> DemoRun:
        seed = SHORT_DEMO_SEEDS[0]
        if "release" not in self.processes:
            self(seed)
            folder = self.root / f"seed{seed}"
            self._launch(
                "release", str(REPO / "configs" / "tiny_synthetic_release.yaml"), seed,
                f"data.dataset_dir={folder / 'data'}", f"components.output_dir={folder / 'components'}",
            )
        return self._wait("release")


@pytest.fixture(scope="session")
def short_demo_runs(tmp_path_factory) -> ShortDemoRuns:
    return ShortDemoRuns(tmp_path_factory.mktemp("demo_runs"))


@pytest.fixture(scope="session")
def trained_demo_weights(short_demo_runs) -> Path:
    """The `final` model directory of the seed-0 shortened demo run."""
    return short_demo_runs(0).folder / "final"
