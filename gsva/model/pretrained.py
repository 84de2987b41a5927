"""Writing a GSVA model directory: ``model.safetensors`` (the trainable weights) + ``config.yaml``.

The directory is what training writes to ``<output_dir>/final``, what ``scripts/export.py``
writes from a DeepSpeed checkpoint, and what ``gsva.pipeline.from_pretrained`` (``eval.py
--weights DIR``, ``scripts/infer.py``, the demo page) reads::

    save_pretrained(model, cfg, "runs/x/final")       # rank 0, each file atomically

Only the trainable weights are stored (see ``gsva.pipeline``), with the frozen ones that no
checkpoint of the config holds (``gsva.model.weights.stored_parameter_names``).
"""

from __future__ import annotations

from pathlib import Path

import torch
import yaml
from safetensors.torch import save

from gsva.atomic import write_bytes_atomic, write_text_atomic
from gsva.config import Config, config_to_dict
from gsva.model.gsva import GsvaModel
from gsva.model.weights import WEIGHTS_NAME, stored_parameter_names

CONFIG_NAME = "config.yaml"


def trainable_state(model: GsvaModel) -> dict[str, torch.Tensor]:
    """name -> CPU tensor of every ``requires_grad`` parameter of ``model`` and of its
    ``frozen_in_weights`` (``stored_parameter_names``)."""
    stored = stored_parameter_names(model)
    return {name: p.detach().cpu().contiguous() for name, p in model.named_parameters() if name in stored}


def write_weights_dir(state: dict[str, torch.Tensor], cfg: Config, directory: str | Path) -> Path:
    """Write ``state`` as ``model.safetensors`` + ``cfg`` as ``config.yaml``, each atomically.
    Returns the weights file."""
    directory = Path(directory)
    write_bytes_atomic(directory / WEIGHTS_NAME, save(state, metadata={"format": "pt"}))
    write_config(cfg, directory / CONFIG_NAME)
    return directory / WEIGHTS_NAME


def write_config(cfg: Config, path: str | Path) -> None:
    """``cfg`` as YAML at ``path``, atomically (what ``load_config`` reads back)."""
    write_text_atomic(path, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))


def save_pretrained(model: GsvaModel, cfg: Config, directory: str | Path) -> Path:
    """Write the trainable weights of ``model`` and the config it was built from to
    ``directory`` (created if needed); call it on one rank. Returns the weights file."""
    return write_weights_dir(trainable_state(model), cfg, directory)
