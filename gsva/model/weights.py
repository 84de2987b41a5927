"""Consolidated GSVA weights: the trainable parameters in one safetensors file.

A load must fill EVERY trainable parameter: a weight left at its random initialisation is an
error, never a warning.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from gsva.model.gsva import GsvaModel

WEIGHTS_NAME = "model.safetensors"


def resolve_weights_file(path: str | Path) -> Path:
    """A weights file, or a directory holding ``model.safetensors``."""
    path = Path(path)
    file = path / WEIGHTS_NAME if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"GSVA weights not found: {file} (expected a {WEIGHTS_NAME} file or its directory)")
    return file


def load_trainable_weights(model: GsvaModel, path: str | Path) -> None:
    """Load the trainable parameters of ``model`` from ``path``; all must be present, none extra."""
    file = resolve_weights_file(path)
    state = load_file(str(file))
    parameters = dict(model.named_parameters())
    expected = {name for name, parameter in parameters.items() if parameter.requires_grad}
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - set(parameters))
    if missing or unexpected:
        raise ValueError(
            f"{file} does not match the model built from the config: {len(missing)} trainable weights missing "
            f"{missing[:5]}, {len(unexpected)} unknown keys {unexpected[:5]}"
        )
    with torch.no_grad():
        for name, tensor in state.items():
            target = parameters[name]
            if target.shape != tensor.shape:
                raise ValueError(f"{file}: {name} has shape {tuple(tensor.shape)}, the model expects {tuple(target.shape)}")
            target.copy_(tensor.to(target.dtype))
