"""LLaVA in the transformers-native ``llava-hf`` layout (``LlavaForConditionalGeneration``).

transformers reads the checkpoint itself (it knows every naming its versions wrote); its parts are
then re-used, without copying, as the parts of our ``LlavaModel``: the LLaMA decoder and
``lm_head`` as a ``LlamaForCausalLM``, the CLIP tower, and ``multi_modal_projector``
(linear_1 → GELU → linear_2) as an ``mlp2x_gelu`` projector. Patch features are read from
``vision_feature_layer`` without the CLS token (``vision_feature_select_strategy: default``).
The loaded model keeps the checkpoint's ``LlavaConfig`` and is saved in the same layout again
(``LlavaHfModel.save_pretrained``), with the current token table.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import LlamaForCausalLM, LlavaConfig, LlavaForConditionalGeneration

from gsva.model.backbones.hf_parts import check_lora_merged, hf_model_around
from gsva.model.mllm import LlavaModel
from gsva.model.hf_loading import load_checked


class LlavaHfModel(LlavaModel):
    """A ``LlavaModel`` read from a ``llava-hf`` checkpoint, holding that checkpoint's ``LlavaConfig``
    (image token id, ``image_seq_length``, vision settings) to be written in its layout again."""

    def __init__(self, hf_config: LlavaConfig, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.hf_config = hf_config

    def hf_model(self) -> LlavaForConditionalGeneration:
        """A ``LlavaForConditionalGeneration`` made of this model's parts (shared, not copied): the
        decoder and ``lm_head``, the CLIP tower, and ``linear_1``/``linear_2`` of the projector;
        its config is the source one with the current token table and embedding tying."""
        hf = hf_model_around(LlavaForConditionalGeneration, self.hf_config, self.language_model)
        hf.model.vision_tower = self.vision_tower
        hf.model.multi_modal_projector.linear_1 = self.mm_projector[0]
        hf.model.multi_modal_projector.linear_2 = self.mm_projector[2]
        return hf

    def save_pretrained(self, directory: str | Path) -> None:
        """Write the model (``config.json`` + safetensors) as a ``LlavaForConditionalGeneration``
        checkpoint; LoRA must be merged first."""
        check_lora_merged(self.language_model)
        self.hf_model().save_pretrained(str(directory))


def load_llava_hf(path: str | Path, dtype: torch.dtype) -> LlavaHfModel:
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
    return LlavaHfModel(
        config,
        language_model,
        hf.model.vision_tower,
        nn.Sequential(projector.linear_1, nn.GELU(), projector.linear_2),
        select_layer=config.vision_feature_layer,
        use_im_start_end=False,
        projector_type="mlp2x_gelu",
    )
