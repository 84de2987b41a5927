"""A GSVA model directory: ``model.safetensors`` (the trainable weights) + ``config.yaml``.

The directory is what training writes to ``<output_dir>/final``, what ``scripts/export.py``
writes from a DeepSpeed checkpoint, and what ``eval.py --weights DIR`` / ``scripts/infer.py``
read::

    save_pretrained(model, cfg, "runs/x/final")       # rank 0, atomic
    gsva = from_pretrained("runs/x/final")             # -> PretrainedGsva(cfg, tokenizer, model, prompts)
    gsva = from_pretrained(path, ["model.precision=bf16"], device="cuda")

Only the trainable weights are stored: the frozen parts (LLM base weights, CLIP, SAM's encoders)
are rebuilt from the paths in ``config.yaml`` (or, for random tiny parts, from ``run.seed``), so
the directory is only complete together with the checkpoints the config names. A load fills
EVERY trainable parameter or fails (``load_trainable_weights``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from safetensors.torch import save_file
from transformers import PreTrainedTokenizerBase

from gsva.config import Config, config_to_dict, load_config
from gsva.data.prompts import PromptSettings
from gsva.model.build import build_gsva
from gsva.model.gsva import GsvaModel
from gsva.model.weights import WEIGHTS_NAME, load_trainable_weights

CONFIG_NAME = "config.yaml"


@dataclass
class PretrainedGsva:
    cfg: Config
    """The configuration read from the directory (with the overrides applied)."""
    tokenizer: PreTrainedTokenizerBase
    model: GsvaModel
    """In eval mode, on the requested device."""
    prompts: PromptSettings


def trainable_state(model: GsvaModel) -> dict[str, torch.Tensor]:
    """name -> CPU tensor of every ``requires_grad`` parameter of ``model``."""
    return {name: p.detach().cpu().contiguous() for name, p in model.named_parameters() if p.requires_grad}


def write_weights_dir(state: dict[str, torch.Tensor], cfg: Config, directory: str | Path) -> Path:
    """Write ``state`` as ``model.safetensors`` + ``cfg`` as ``config.yaml``, each atomically
    (written beside, then renamed). Returns the weights file."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    partial = directory / f"{WEIGHTS_NAME}.partial"
    save_file(state, str(partial), metadata={"format": "pt"})
    os.replace(partial, directory / WEIGHTS_NAME)
    partial_config = directory / f"{CONFIG_NAME}.partial"
    partial_config.write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    os.replace(partial_config, directory / CONFIG_NAME)
    return directory / WEIGHTS_NAME


def save_pretrained(model: GsvaModel, cfg: Config, directory: str | Path) -> Path:
    """Write the trainable weights of ``model`` and the config it was built from to
    ``directory`` (created if needed); call it on one rank. Returns the weights file."""
    return write_weights_dir(trainable_state(model), cfg, directory)


def from_pretrained(directory: str | Path, overrides: list[str] | tuple[str, ...] = (), device: str | torch.device = "cpu") -> PretrainedGsva:
    """Rebuild the model of ``directory/config.yaml`` (dotted ``overrides`` applied, e.g.
    ``model.precision=bf16``) with ``build_gsva`` and strictly load ``directory/model.safetensors``."""
    directory = Path(directory)
    config_file = directory / CONFIG_NAME
    if not config_file.is_file():
        raise FileNotFoundError(f"{config_file} not found: not a GSVA model directory (see save_pretrained)")
    cfg = load_config(config_file, list(overrides))
    tokenizer, model, prompts = build_gsva(cfg)
    load_trainable_weights(model, directory)
    model.to(torch.device(device)).eval()
    return PretrainedGsva(cfg=cfg, tokenizer=tokenizer, model=model, prompts=prompts)
