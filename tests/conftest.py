"""Shared fixtures: a tiny synthetic gRefCOCO set, a locally trained tokenizer, tiny configs."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch

from gsva.config import Config, load_config
from gsva.data.synthetic import COLOURS, SyntheticSpec, write_synthetic_grefcoco
from gsva.data.tokenizer import train_tiny_bpe
from gsva.engine.components import tokenizer_corpus

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
