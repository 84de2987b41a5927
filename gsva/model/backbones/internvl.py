"""InternVL in the transformers layout (``InternVLForConditionalGeneration``, the ``-hf``
checkpoints such as ``OpenGVLab/InternVL3-1B-hf``) as GSVA's multimodal LLM.

transformers reads the checkpoint; its parts are re-used, without copying, behind the interface
``GsvaModel`` uses (the one of ``LlavaModel``):

- ``vision_tower``: the InternViT, frozen; ``vision_features`` returns its patch features of layer
  ``vision_feature_layer`` (``-1``: the tower's output, after its final norm), without the CLS
  token (``vision_feature_select_strategy: default``), before any projection: what a feature cache
  stores;
- ``mm_projector``: pixel shuffle (``downsample_ratio``) then ``multi_modal_projector`` (LayerNorm,
  Linear, GELU, Linear), frozen as LLaVA's projector is in GSVA; ``mm_projector(vision_features(x))``
  is ``InternVLForConditionalGeneration.get_image_features(pixel_values)``;
- ``language_model``: a causal LM of the text config holding the decoder and ``lm_head`` (LoRA,
  token resizing, ``generate`` with ``inputs_embeds``).

Every image is ONE tile of the vision config's ``image_size`` (no dynamic tiling, no thumbnail), so
it always takes P = (image_size / patch_size)² · downsample_ratio² positions in the sequence.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any
from pathlib import Path

import torch
from torch import nn
from transformers import InternVLConfig, InternVLForConditionalGeneration, PreTrainedModel
from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil
from transformers.models.internvl.modeling_internvl import InternVLMultiModalProjector

from gsva.model.backbones.hf_parts import (
    causal_lm_of,
    check_feature_selection,
    check_lora_merged,
    check_model_type,
    decoder_lora_target_modules,
    hf_model_around,
)
from gsva.model.hf_loading import load_checked
from gsva.model.mllm import check_hidden_state_count
from gsva.model.pixels import _channel_vector
from gsva.model.spliced_decoder import SplicedDecoder
from gsva.text.special_tokens import IMAGE_PLACEHOLDER

INTERNVL_MODEL_TYPE = "internvl"
INTERNVL_IMAGE_MEAN = (0.485, 0.456, 0.406)
INTERNVL_IMAGE_STD = (0.229, 0.224, 0.225)
"""The pixel statistics InternVL's checkpoints declare in ``preprocessor_config.json``; used when a
directory has no such file."""
IMAGE_START_TOKEN = "<img>"
IMAGE_END_TOKEN = "</img>"
IMAGE_CONTEXT_TOKEN = "<IMG_CONTEXT>"
IMAGE_MARKER = f"{IMAGE_START_TOKEN}{IMAGE_PLACEHOLDER}{IMAGE_END_TOKEN}"
"""The image in a prompt's text: InternVL wraps its image positions in ``<img>``/``</img>``; the
placeholder between them becomes the P spliced features."""
PREPROCESSOR_CONFIG = "preprocessor_config.json"


def pixel_shuffle(features: torch.Tensor, ratio: float) -> torch.Tensor:
    """(B, N, C) features of a square n×n patch grid (N = n²) -> (B, N·ratio², C/ratio²): each
    (1/ratio)×(1/ratio) block of neighbouring patches concatenated into one vector, in the order of
    ``InternVLModel.pixel_shuffle``."""
    batch, tokens, channels = features.shape
    side = math.isqrt(tokens)
    if side * side != tokens:
        raise ValueError(f"{tokens} patch features do not form a square grid")
    reduced_side, reduced_channels = int(side * ratio), int(channels / ratio)
    grid = features.reshape(batch, side, side, channels)
    grid = grid.view(batch, side, reduced_side, reduced_channels).permute(0, 2, 1, 3).contiguous()
    grid = grid.view(batch, reduced_side, reduced_side, int(channels / ratio**2)).permute(0, 2, 1, 3).contiguous()
    return grid.reshape(batch, reduced_side * reduced_side, -1)


class InternVLProjector(nn.Module):
    """Pixel shuffle then InternVL's ``multi_modal_projector``."""

    def __init__(self, multi_modal_projector: InternVLMultiModalProjector, downsample_ratio: float) -> None:
        super().__init__()
        self.multi_modal_projector = multi_modal_projector
        self.downsample_ratio = downsample_ratio

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(B, N, D_v) patch features -> (B, P, D) with P = N · downsample_ratio²."""
        return self.multi_modal_projector(pixel_shuffle(features, self.downsample_ratio))


def check_supported_config(config: InternVLConfig) -> None:
    """Raise ValueError unless the vision features come from one layer, without CLS, on a square tile."""
    check_feature_selection(config, config.name_or_path or type(config).__name__, "pixel shuffle")
    height, width = config.vision_config.image_size
    if height != width:
        raise ValueError(f"vision image_size {config.vision_config.image_size}: only square tiles are supported")


class InternVLBackbone(SplicedDecoder):
    """InternVL behind ``GsvaModel``'s multimodal-LLM interface."""

    def __init__(
        self,
        config: InternVLConfig,
        language_model: PreTrainedModel,
        vision_tower: PreTrainedModel,
        mm_projector: InternVLProjector,
        image_mean: Sequence[float] = INTERNVL_IMAGE_MEAN,
        image_std: Sequence[float] = INTERNVL_IMAGE_STD,
    ) -> None:
        super().__init__()
        check_supported_config(config)
        self.config = config
        self.language_model = language_model
        self.vision_tower = vision_tower
        self.mm_projector = mm_projector
        self.image_mean = tuple(image_mean)
        self.image_std = tuple(image_std)

    @classmethod
    def from_hf(
        cls,
        hf: InternVLForConditionalGeneration,
        image_mean: Sequence[float] = INTERNVL_IMAGE_MEAN,
        image_std: Sequence[float] = INTERNVL_IMAGE_STD,
    ) -> InternVLBackbone:
        """The parts of ``hf`` (shared, not copied) as a backbone."""
        projector = InternVLProjector(hf.model.multi_modal_projector, hf.config.downsample_ratio)
        return cls(hf.config, causal_lm_of(hf), hf.model.vision_tower, projector, image_mean, image_std)

    @property
    def hidden_size(self) -> int:
        return self.language_model.config.hidden_size

    @property
    def tile_size(self) -> int:
        """Side S of the square (B, 3, S, S) images ``vision_features`` takes."""
        return self.config.vision_config.image_size[0]

    @property
    def image_token_count(self) -> int:
        """P, the sequence positions of one image: (S / patch)² · downsample_ratio²."""
        patches_per_side = self.tile_size // self.config.vision_config.patch_size[0]
        return int(patches_per_side * self.config.downsample_ratio) ** 2

    def pixel_values(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) uint8 RGB -> (B, 3, S, S) float32: scaled to [0, 1] and normalised with the
        image processor's mean and std (its output for one tile with tiling off)."""
        if images.shape[-2:] != (self.tile_size, self.tile_size):
            raise ValueError(
                f"images of {tuple(images.shape[-2:])} pixels; this InternVL takes {self.tile_size}² tiles"
            )
        scaled = images.float() / 255.0
        return (scaled - _channel_vector(self.image_mean, images)) / _channel_vector(self.image_std, images)

    @property
    def vision_encoder(self) -> nn.Module:
        """The frozen vision part whose output a feature cache holds (the vision tower)."""
        return self.vision_tower

    def feature_settings(self) -> dict[str, Any]:
        """What, beside the encoder's weights and input size, decides the cached features."""
        return {"vision_feature_layer": self.config.vision_feature_layer}

    def vision_feature_shape(self, image_size: int) -> tuple[int, int]:
        """(N, D_v) of ``vision_features`` for (B, 3, image_size, image_size) images."""
        return ((image_size // self.config.vision_config.patch_size[0]) ** 2, self.vision_tower.config.hidden_size)

    def vision_features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) uint8 -> (B, N, D_v) patch features (no CLS) of the frozen tower's layer
        ``vision_feature_layer``, before pixel shuffle and projector; contiguous, like features read
        from a cache."""
        layer = self.config.vision_feature_layer
        pixels = self.pixel_values(images).to(self.vision_tower.dtype)
        outputs = self.vision_tower(pixel_values=pixels, output_hidden_states=layer != -1)
        if layer == -1:
            selected = outputs.last_hidden_state
        else:
            check_hidden_state_count(outputs.hidden_states, self.vision_tower.config.num_hidden_layers)
            selected = outputs.hidden_states[layer]
        return selected[:, 1:].contiguous()

    lora_target_modules = staticmethod(decoder_lora_target_modules)

    def hf_model(self) -> InternVLForConditionalGeneration:
        """An ``InternVLForConditionalGeneration`` made of this backbone's parts (shared, not copied),
        its config updated to the current token table and embedding tying."""
        hf = hf_model_around(InternVLForConditionalGeneration, self.config, self.language_model)
        hf.model.vision_tower = self.vision_tower
        hf.model.multi_modal_projector = self.mm_projector.multi_modal_projector
        return hf

    def image_processor(self) -> GotOcr2ImageProcessorPil:
        """transformers' InternVL image processor for one tile of ``tile_size`` with these statistics."""
        return GotOcr2ImageProcessorPil(
            image_mean=list(self.image_mean),
            image_std=list(self.image_std),
            size={"height": self.tile_size, "width": self.tile_size},
            crop_to_patches=False,
        )

    def save_pretrained(self, directory: str | Path) -> None:
        """Write the model (``config.json`` + safetensors) and its image processor
        (``preprocessor_config.json``) in the transformers layout; LoRA must be merged first."""
        check_lora_merged(self.language_model)
        self.hf_model().save_pretrained(str(directory))
        self.image_processor().save_pretrained(str(directory))


def read_image_statistics(path: Path) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) of ``path/preprocessor_config.json``, InternVL's own when there is none."""
    config_file = path / PREPROCESSOR_CONFIG
    if not config_file.is_file():
        return INTERNVL_IMAGE_MEAN, INTERNVL_IMAGE_STD
    raw = json.loads(config_file.read_text())
    return tuple(raw.get("image_mean", INTERNVL_IMAGE_MEAN)), tuple(raw.get("image_std", INTERNVL_IMAGE_STD))


def load_internvl(path: str | Path, dtype: torch.dtype) -> InternVLBackbone:
    """Load a ``save_pretrained`` directory of ``InternVLForConditionalGeneration`` in ``dtype``;
    ValueError for a directory of another model type, or with a weight missing."""
    path = Path(path)
    check_model_type(
        path, INTERNVL_MODEL_TYPE, "an InternVL checkpoint in the transformers layout, e.g. OpenGVLab/InternVL3-1B-hf"
    )
    hf = load_checked(InternVLForConditionalGeneration, path, dtype)
    image_mean, image_std = read_image_statistics(path)
    return InternVLBackbone.from_hf(hf, image_mean, image_std)

