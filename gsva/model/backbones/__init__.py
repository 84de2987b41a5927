"""The multimodal LLMs GSVA can drive SAM with, and how a checkpoint directory is told apart.

| ``model.backbone`` | checkpoint (``config.json``) | adapter |
|---|---|---|
| ``llava`` | the original LLaVA layout (``mm_vision_tower``) | ``gsva.model.mllm.LlavaModel`` |
| ``llava_hf`` | ``model_type: llava`` (transformers' ``LlavaForConditionalGeneration``) | ``gsva.model.backbones.llava_hf.LlavaHfModel`` (a ``LlavaModel``) |
| ``qwen2_5_vl`` | ``model_type: qwen2_5_vl`` | ``qwen2_5_vl.Qwen25VLBackbone`` |
| ``internvl`` | ``model_type: internvl`` (the ``-hf`` layout) | ``internvl.InternVLBackbone`` |
| ``llava_next`` | ``model_type: llava_next`` (llava-hf ``llava-v1.6-*-hf``) | ``llava_next.LlavaNextBackbone`` |

Every adapter offers what ``GsvaModel`` uses (``Backbone``). ``auto`` reads the kind from the
checkpoint's ``config.json``; a named kind must match it. Kinds close to a supported one that no
adapter reads correctly (LLaVA-OneVision, Qwen2-VL) are refused by name.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from gsva.model.backbones import internvl, llava_next, qwen2_5_vl
from gsva.model.backbones.internvl import load_internvl
from gsva.model.backbones.llava_next import load_llava_next
from gsva.model.backbones.qwen2_5_vl import load_qwen2_5_vl
from gsva.model.generation import GreedyGeneration
from gsva.model.backbones.llava_hf import load_llava_hf
from gsva.model.mllm import load_llava
from gsva.model.splicing import SplicedInputs

BACKBONES = ("llava", "llava_hf", "qwen2_5_vl", "internvl", "llava_next")
"""Backbone kinds (``model.backbone``; ``auto`` reads the kind from the checkpoint)."""

IMAGE_MARKERS = {
    "qwen2_5_vl": qwen2_5_vl.IMAGE_MARKER, "internvl": internvl.IMAGE_MARKER, "llava_next": llava_next.IMAGE_MARKER,
}
"""How the image is written into the first question, by the transformers-layout kinds whose
conversations may be rendered by the checkpoint tokenizer's chat template (``data.conversation:
chat_template``)."""

CHAT_TEMPLATE_ONLY = ("qwen2_5_vl", "internvl")
"""Kinds prompted with their checkpoint's chat template only. LLaVA-NeXT also takes LLaVA's own
templates: its marker is LLaVA's ``<image>``, and llava-v1.6-vicuna was tuned on Vicuna-v1's
conversations (``llava_v1`` with "user" for "human" in the system prompt)."""

REFUSED_MODEL_TYPES = {
    "llava_onevision": "LLaVA-OneVision (its anyres_max tiling, which pools large feature grids, is not implemented; "
    "llava_next reads LLaVA-NeXT only)",
    "qwen2_vl": "Qwen2-VL (only Qwen2.5-VL is implemented)",
}


class Backbone(Protocol):
    """What ``GsvaModel`` uses of its multimodal LLM (every adapter of ``BACKBONES`` offers it)."""

    language_model: nn.Module
    """The causal LM (decoder + lm_head, nothing else: LoRA, resizing and checkpointing act on it)."""
    mm_projector: nn.Module
    """(B, N, D_v) frozen features -> (B, P, D) in the LLM's embedding space (N ≠ P where the
    projector merges patches, InternVL's pixel shuffle, or packs tiles, LLaVA-NeXT's)."""

    @property
    def hidden_size(self) -> int: ...

    def vision_features(self, clip_images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) uint8 -> (B, N, D_v) features of the frozen vision part (what a cache stores)."""

    def splice(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, image_features: torch.Tensor,
        conv_to_image: torch.Tensor, labels: torch.Tensor | None = None,
    ) -> SplicedInputs: ...

    @staticmethod
    def spliced_positions(input_ids: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, patches: int) -> torch.Tensor: ...

    def last_hidden_states(
        self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor | None, token_ids: torch.Tensor
    ) -> torch.Tensor:
        """(N, L', D) post-norm last-layer states; ``token_ids`` = ``SplicedInputs.token_ids``."""

    def lm_logits(self, hidden: torch.Tensor) -> torch.Tensor: ...

    def generate_from_embeds(
        self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, token_ids: torch.Tensor,
        max_new_tokens: int, eos_token_id: int, pad_token_id: int,
    ) -> GreedyGeneration: ...


def read_checkpoint_config(path: str | Path) -> dict[str, Any]:
    """``path/config.json``; FileNotFoundError naming the file when absent."""
    config_file = Path(path) / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{config_file} not found: model.llava_path must be a checkpoint directory")
    return json.loads(config_file.read_text())


def checkpoint_kind(path: str | Path) -> str:
    """The backbone kind of the checkpoint at ``path``, from its ``config.json``; ValueError naming
    the directory and its ``model_type`` when no adapter reads it."""
    config = read_checkpoint_config(path)
    model_type = config.get("model_type", "")
    if "mm_vision_tower" in config:
        return "llava"
    if model_type in REFUSED_MODEL_TYPES:
        raise ValueError(f"{path}: model_type {model_type!r} is {REFUSED_MODEL_TYPES[model_type]}; supported: {list(BACKBONES)}")
    if model_type == "llava":
        return "llava_hf"
    if model_type in BACKBONES:
        return model_type
    raise ValueError(
        f"{path}: model_type {model_type!r} is not a supported multimodal LLM; supported: original LLaVA "
        f"(mm_vision_tower in config.json), llava (llava-hf), qwen2_5_vl, internvl, llava_next"
    )


def resolve_backbone(setting: str, llava_path: str | Path | None) -> str:
    """The backbone kind of ``model.backbone`` = ``setting`` for the checkpoint ``llava_path``
    (None: a random tiny model, ``llava`` under ``auto``). A named kind that the checkpoint is not
    is refused, naming both."""
    if llava_path is None:
        return "llava" if setting == "auto" else setting
    found = checkpoint_kind(llava_path)
    if setting not in ("auto", found):
        raise ValueError(f"model.backbone={setting!r} but {llava_path} is a {found!r} checkpoint; set model.backbone={found} or auto")
    return found


def load_backbone(
    kind: str, path: str | Path, vision_tower_path: str | Path | None, dtype: torch.dtype, image_size: int
) -> Backbone:
    """Load the checkpoint at ``path`` with the adapter of ``kind`` (``resolve_backbone``);
    ``vision_tower_path`` applies to the original LLaVA layout (its CLIP tower lives apart);
    ``image_size`` (``data.clip_image_size``) to LLaVA-NeXT, whose tiles and token count it fixes."""
    if kind == "llava":
        return load_llava(path, vision_tower_path, dtype)
    if kind == "llava_next":
        return load_llava_next(path, dtype, image_size)
    loaders = {"llava_hf": load_llava_hf, "qwen2_5_vl": load_qwen2_5_vl, "internvl": load_internvl}
    if kind not in loaders:
        raise ValueError(f"unknown backbone {kind!r}; expected one of {list(BACKBONES)}")
    return loaders[kind](path, dtype)
