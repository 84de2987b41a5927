"""LLaVA in the transformers-native ``llava-hf`` layout (``LlavaForConditionalGeneration``).

transformers reads the checkpoint itself (it knows every naming its versions wrote); its parts are
then re-used, without copying, as the parts of our ``LlavaModel``: the LLaMA decoder and
``lm_head`` as a causal LM of the text config, the CLIP tower, and ``multi_modal_projector``
(linear_1 → GELU → linear_2) as an ``mlp2x_gelu`` projector. Patch features are read from
``vision_feature_layer`` without the CLS token (``vision_feature_select_strategy: default``).
The loaded model keeps the checkpoint's ``LlavaConfig`` and is saved in the same layout again
(``LlavaHfModel.save_pretrained``), with the current token table.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import LlavaConfig, LlavaForConditionalGeneration

from gsva.model.backbones.hf_parts import (
    causal_lm_of,
    check_feature_selection,
    check_lora_merged,
    check_model_type,
    hf_model_around,
)
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
    check_model_type(Path(path), "llava", "a LlavaForConditionalGeneration checkpoint")
    hf = load_checked(LlavaForConditionalGeneration, path, dtype)
    config = hf.config
    check_feature_selection(config, str(path), "the projector")
    if config.projector_hidden_act != "gelu":
        raise ValueError(f"{path}: projector_hidden_act={config.projector_hidden_act!r}; only 'gelu' is supported")
    projector = hf.model.multi_modal_projector
    return LlavaHfModel(
        config,
        causal_lm_of(hf),
        hf.model.vision_tower,
        nn.Sequential(projector.linear_1, nn.GELU(), projector.linear_2),
        select_layer=config.vision_feature_layer,
        use_im_start_end=False,
        projector_type="mlp2x_gelu",
    )
