"""Consolidated GSVA weights: the trainable parameters in one safetensors file, together with the
frozen ones that no checkpoint of the config holds (``GsvaModel.frozen_in_weights``: a
``model.mm_projector_init: random`` projector).

A load must fill EVERY such parameter: a weight left at its random initialisation is an error,
never a warning. Frozen weights found in a file (e.g. the random projector of the run a
finetuning starts from) replace the model's and are saved with it again.
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


def stored_parameter_names(model: GsvaModel) -> set[str]:
    """The parameters a weights file of ``model`` holds: the trainable ones and
    ``model.frozen_in_weights``."""
    trainable = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    return trainable | model.frozen_in_weights


def load_trainable_weights(model: GsvaModel, path: str | Path) -> None:
    """Load the stored parameters of ``model`` (``stored_parameter_names``) from ``path``; all must
    be present, none unknown. Frozen parameters the file also holds are loaded too and join
    ``model.frozen_in_weights``."""
    file = resolve_weights_file(path)
    state = load_file(str(file))
    parameters = dict(model.named_parameters())
    missing = sorted(stored_parameter_names(model) - set(state))
    unexpected = sorted(set(state) - set(parameters))
    if missing or unexpected:
        raise ValueError(
            f"{file} does not match the model built from the config: {len(missing)} weights missing "
            f"{missing[:5]} (trainable, or frozen and held by no checkpoint the config names, such as a "
            f"model.mm_projector_init: random projector), {len(unexpected)} unknown keys {unexpected[:5]}"
        )
    with torch.no_grad():
        for name, tensor in state.items():
            target = parameters[name]
            if target.shape != tensor.shape:
                raise ValueError(f"{file}: {name} has shape {tuple(tensor.shape)}, the model expects {tuple(target.shape)}")
            target.copy_(tensor.to(target.dtype))
    model.frozen_in_weights.update(name for name in state if not parameters[name].requires_grad)
