"""What the adapters of transformers' ``*ForConditionalGeneration`` models share when their language
side is a plain causal LM (InternVL, LLaVA-NeXT): the causal LM made of the model's own decoder and
``lm_head``, a LoRA regex limited to its layers, and the checks made on a config or a checkpoint
directory before it is read or written."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, PretrainedConfig, PreTrainedModel


def ties_word_embeddings(language_model: PreTrainedModel) -> bool:
    """Whether ``lm_head`` and the input embeddings share one weight."""
    return language_model.get_output_embeddings().weight is language_model.get_input_embeddings().weight


def causal_lm_of(hf: PreTrainedModel) -> PreTrainedModel:
    """A causal LM of ``hf``'s text config made of ``hf``'s own decoder (``hf.model.language_model``)
    and ``lm_head`` (no copy). Its config ties the word embeddings exactly when ``hf``'s weights are
    tied, so that resizing the token table keeps ``lm_head`` consistent."""
    text_config = hf.config.text_config
    text_config.tie_word_embeddings = hf.lm_head.weight is hf.get_input_embeddings().weight
    with torch.device("meta"):
        language_model = AutoModelForCausalLM.from_config(text_config)
    language_model.model = hf.model.language_model
    language_model.lm_head = hf.lm_head
    return language_model


def hf_model_around(model_class: type[PreTrainedModel], config, language_model: PreTrainedModel) -> PreTrainedModel:
    """A ``model_class`` of a copy of ``config`` whose text config and embedding tying are those of
    ``language_model`` (the current token table), holding ``language_model``'s decoder and
    ``lm_head`` (shared, not copied); its vision parts are left for the caller to attach."""
    config = copy.deepcopy(config)
    config.text_config = copy.deepcopy(language_model.config)
    config.tie_word_embeddings = ties_word_embeddings(language_model)
    with torch.device("meta"):
        hf = model_class(config)
    hf.model.language_model = language_model.model
    hf.lm_head = language_model.lm_head
    return hf


def decoder_lora_target_modules(names: Sequence[str]) -> str:
    """A peft ``target_modules`` regex selecting the modules called ``names`` (e.g. ``q_proj``,
    ``v_proj``) inside the decoder layers of the language model only, whether peft is applied to
    ``language_model``, to the backbone or to a model holding it (``mllm.``): vision towers have
    attention modules of the same names."""
    alternatives = "|".join(re.escape(name) for name in names)
    return rf"^(?:(?:.*\.)?language_model\.)?model\.layers\.\d+\.(?:.*\.)?(?:{alternatives})$"


def check_lora_merged(language_model: PreTrainedModel) -> None:
    """ValueError unless ``language_model`` is free of LoRA modules (a transformers layout has no
    place for them: merge first)."""
    lora = [name for name, _ in language_model.named_modules() if "lora_" in name]
    if lora:
        raise ValueError(f"the language model holds LoRA modules ({lora[0]}, …): merge them before saving")


def check_feature_selection(config: PretrainedConfig, source: str, grid_user: str) -> None:
    """ValueError naming ``source`` and the field unless the image features are one layer's
    (``vision_feature_layer`` an int) patches without CLS (``vision_feature_select_strategy``
    ``default``): the grid that ``grid_user`` needs."""
    if not isinstance(config.vision_feature_layer, int):
        raise ValueError(f"{source}: vision_feature_layer={config.vision_feature_layer!r}; only a single layer is supported")
    if config.vision_feature_select_strategy != "default":
        raise ValueError(
            f"{source}: vision_feature_select_strategy={config.vision_feature_select_strategy!r}; only 'default' "
            f"(patches without CLS, the grid {grid_user} needs) is supported"
        )


def check_model_type(path: Path, expected: str, description: str) -> None:
    """FileNotFoundError naming ``path/config.json`` when absent; ValueError naming ``path``, its
    ``model_type`` and ``expected`` (``description``: what such a checkpoint is) when they differ."""
    config_file = path / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{description}: {config_file} not found")
    model_type = json.loads(config_file.read_text()).get("model_type", "")
    if model_type != expected:
        raise ValueError(f"{path}: config.json has model_type {model_type!r}, expected {expected!r} ({description})")
