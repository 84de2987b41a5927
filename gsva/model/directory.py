"""The GSVA model directory, written and read here only: ``model.safetensors`` (the trainable
weights) + ``config.yaml`` (the config the model was built from).

The directory is what training writes to ``<output_dir>/final``, what ``scripts/export.py``
writes from a DeepSpeed checkpoint, and what ``gsva.pipeline.from_pretrained`` (``eval.py
--weights DIR``, ``scripts/infer.py``, the demo page) reads::

    save_pretrained(model, cfg, "runs/x/final")       # rank 0, each file atomically
    load_trainable_weights(model, "runs/x/final")     # into a model rebuilt from its config.yaml

Only the trainable weights are stored, with the frozen ones that no checkpoint of the config holds
(``GsvaModel.frozen_in_weights``: a ``model.mm_projector_init: random`` projector): the frozen parts
(LLM base weights, vision tower, SAM's encoders) are rebuilt from the paths in ``config.yaml``.

A load must fill EVERY stored parameter: a weight left at its random initialisation is an error,
never a warning. Frozen weights found in a file (e.g. the random projector of the run a finetuning
starts from) replace the model's and are saved with it again.
"""

from __future__ import annotations

from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file, save

from gsva.atomic import write_bytes_atomic, write_text_atomic
from gsva.config import Config, config_to_dict
from gsva.model.gsva import GsvaModel

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.yaml"


def model_directory(weights: str | Path) -> Path:
    """The model directory of ``weights`` (the directory itself, or the folder of its
    ``model.safetensors``)."""
    weights = Path(weights)
    return weights.parent if weights.name == WEIGHTS_NAME and weights.is_file() else weights


def config_file_of(weights: str | Path) -> Path:
    """The ``config.yaml`` of the model directory of ``weights``; FileNotFoundError when absent."""
    config_file = model_directory(weights) / CONFIG_NAME
    if not config_file.is_file():
        raise FileNotFoundError(f"{config_file} not found: not a GSVA model directory (see save_pretrained)")
    return config_file


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
