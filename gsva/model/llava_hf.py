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

import torch
from torch import nn
from transformers import LlamaForCausalLM, LlavaForConditionalGeneration

from gsva.model.mllm import LlavaModel
from gsva.model.hf_loading import load_checked


def load_llava_hf(path: str | Path, dtype: torch.dtype) -> LlavaModel:
    """Load a ``llava-hf`` directory as our ``LlavaModel``; every weight must be in the files and
    its ``model_type`` must be ``llava`` (a LLaVA-NeXT directory would otherwise load as a plain
    LLaVA, its ``image_newline`` and anyres tiling silently dropped)."""
    model_type = json.loads((Path(path) / "config.json").read_text()).get("model_type")
    if model_type != "llava":
        raise ValueError(f"{path}: model_type {model_type!r}, expected 'llava' (a LlavaForConditionalGeneration checkpoint)")
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
