"""LLaVA in the transformers-native ``llava-hf`` layout (``LlavaForConditionalGeneration``).

transformers reads the checkpoint itself (it knows every naming its versions wrote); its parts are
then re-used, without copying, as the parts of our ``LlavaModel``: the LLaMA decoder and
``lm_head`` as a ``LlamaForCausalLM``, the CLIP tower, and ``multi_modal_projector``
(linear_1 → GELU → linear_2) as an ``mlp2x_gelu`` projector. Patch features are read from
``vision_feature_layer`` without the CLS token (``vision_feature_select_strategy: default``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import LlamaForCausalLM, LlavaForConditionalGeneration

from gsva.model.mllm import LlavaModel, load_llava
from gsva.model.hf_loading import load_checked


def is_llava_hf_config(config: dict[str, Any]) -> bool:
    """True for a ``LlavaConfig`` (nested text and vision configs) rather than the original layout."""
    return "text_config" in config and "vision_config" in config


def load_llava_hf(path: str | Path, dtype: torch.dtype) -> LlavaModel:
    """Load a ``llava-hf`` directory as our ``LlavaModel``; every weight must be in the files."""
    hf = load_checked(LlavaForConditionalGeneration, path, dtype)
    config = hf.config
    if config.vision_feature_select_strategy != "default" or not isinstance(config.vision_feature_layer, int):
        raise ValueError(
            f"{path}: vision_feature_select_strategy={config.vision_feature_select_strategy!r}, "
            f"vision_feature_layer={config.vision_feature_layer!r}; only 'default' (patches without CLS) "
            "from one layer is supported"
        )
    if config.projector_hidden_act != "gelu":
        raise ValueError(f"{path}: projector_hidden_act={config.projector_hidden_act!r}; only 'gelu' is supported")
    with torch.device("meta"):
        language_model = LlamaForCausalLM(config.text_config)
    language_model.model = hf.model.language_model
    language_model.lm_head = hf.lm_head
    projector = hf.model.multi_modal_projector
    return LlavaModel(
        language_model,
        hf.model.vision_tower,
        nn.Sequential(projector.linear_1, nn.GELU(), projector.linear_2),
        select_layer=config.vision_feature_layer,
        use_im_start_end=False,
        projector_type="mlp2x_gelu",
    )


def load_llava_any(path: str | Path, vision_tower_path: str | Path | None, dtype: torch.dtype) -> LlavaModel:
    """A LLaVA checkpoint in the original layout or in the ``llava-hf`` layout (told by its config)."""
    config_file = Path(path) / "config.json"
    if config_file.is_file() and is_llava_hf_config(json.loads(config_file.read_text())):
        return load_llava_hf(path, dtype)
    return load_llava(path, vision_tower_path, dtype)
