"""LLaVA-NeXT in the transformers layout (``LlavaNextForConditionalGeneration``, the llava-hf
``llava-v1.6-*-hf`` checkpoints) as GSVA's multimodal LLM, with a fixed number of image tokens.

GSVA gives the backbone square S×S images (S = ``data.clip_image_size``). For such an image the
adapter computes what transformers' LLaVA-NeXT computes, re-using the model's parts without
copying behind the interface ``GsvaModel`` uses:

- pixels: the checkpoint's image processor (``LlavaNextImageProcessor``, read from
  ``preprocessor_config.json``; without one, the processor of the config's tile size and
  ``image_grid_pinpoints``) makes the base patch (the image resized to one tile) and the anyres
  tiles (the image resized into the pinpoint resolution ``select_best_resolution`` picks for S×S,
  padded, cut into tiles), with ``image_sizes`` = (S, S);
- ``vision_features``: the frozen CLIP tower on all T = 1 + tiles patches, layer
  ``vision_feature_layer`` without CLS (``vision_feature_select_strategy: default``): (B, T·n², D_v)
  with n = tile / patch, before any projection: what a feature cache stores;
- ``mm_projector``: ``multi_modal_projector`` on every patch feature, then ``LlavaNextModel``'s
  packing: the base patch's n² features first, then the tiles as one feature grid unpadded to the
  image's aspect ratio (for a square image: the centred square that is not padding), every row of
  it followed by ``image_newline``. ``image_newline`` is frozen with the projector.
  ``mm_projector(vision_features(x))`` is ``LlavaNextModel.get_image_features`` of the processor's
  output;
- ``language_model``: a causal LM of the text config holding the decoder and ``lm_head`` (LoRA,
  token resizing, ``generate`` with ``inputs_embeds``).

S fixes the tile grid, so every image takes the same P = n² + h·(w + 1) positions (h × w: the
unpadded grid), the count LLaVA-NeXT's processor expands its ``<image>`` token to for an S×S image:
2,928 at S = 672 and 1,176 at S = 336 with the llava-v1.6 pinpoints.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration, LlavaNextImageProcessor, PreTrainedModel
from transformers.models.llava_next.modeling_llava_next import (
    LlavaNextMultiModalProjector,
    get_anyres_image_grid_shape,
    unpad_image,
)

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
from gsva.model.spliced_decoder import SplicedDecoder
from gsva.text.special_tokens import IMAGE_PLACEHOLDER

LLAVA_NEXT_MODEL_TYPE = "llava_next"
IMAGE_MARKER = IMAGE_PLACEHOLDER
"""The image in a prompt's text: LLaVA-NeXT writes ``<image>`` (its processor expands it to the P
image positions), which is GSVA's placeholder itself."""
PREPROCESSOR_CONFIG = "preprocessor_config.json"
IMAGE_PROCESSOR_TYPES = ("LlavaNextImageProcessor", "LlavaNextImageProcessorFast")
"""``image_processor_type`` values of ``preprocessor_config.json`` that transformers reads as the
torchvision ``LlavaNextImageProcessor`` (its default backend), the one this adapter runs."""


@dataclass(frozen=True)
class AnyresLayout:
    """Where transformers' LLaVA-NeXT puts the features of one square image of ``image_size`` px."""

    image_size: int
    patches_per_side: int
    """n: patches per side of one tile (tile size / patch size)."""
    tile_rows: int
    tile_cols: int

    @classmethod
    def of(cls, image_size: int, tile_size: int, patch_size: int, pinpoints: Sequence[Sequence[int]]) -> AnyresLayout:
        """The layout of an ``image_size``² image: tiles of ``tile_size`` px (the vision tower's
        input) on the pinpoint resolution ``select_best_resolution`` picks, as
        ``get_anyres_image_grid_shape`` counts them."""
        rows, cols = get_anyres_image_grid_shape([image_size, image_size], [list(p) for p in pinpoints], tile_size)
        return cls(image_size, tile_size // patch_size, rows, cols)

    @property
    def patch_count(self) -> int:
        """T: the base patch and the tiles."""
        return 1 + self.tile_rows * self.tile_cols

    @property
    def feature_count(self) -> int:
        """T·n² patch features of one image."""
        return self.patch_count * self.patches_per_side**2

    def packing_index(self) -> torch.Tensor:
        """(P,) long: the source of each image position in a table of the base patch's n²
        features, then the tiles' (rows·n) × (cols·n) feature grid in raster order, then
        ``image_newline`` (the last entry): the base patch, then each row of the grid unpadded
        by transformers' ``unpad_image`` and followed by a newline."""
        base = self.patches_per_side**2
        height, width = self.tile_rows * self.patches_per_side, self.tile_cols * self.patches_per_side
        grid = torch.arange(base, base + height * width).view(1, height, width)
        kept = unpad_image(grid, [self.image_size, self.image_size])[0]
        newlines = torch.full((kept.shape[0], 1), base + height * width)
        return torch.cat([torch.arange(base), torch.cat([kept, newlines], dim=1).flatten()])


class LlavaNextProjector(nn.Module):
    """``multi_modal_projector`` then LLaVA-NeXT's packing with ``image_newline``, for one layout."""

    packing_index: torch.Tensor

    def __init__(
        self, multi_modal_projector: LlavaNextMultiModalProjector, image_newline: nn.Parameter, layout: AnyresLayout
    ) -> None:
        super().__init__()
        self.multi_modal_projector = multi_modal_projector
        self.image_newline = image_newline
        self.layout = layout
        self.register_buffer("packing_index", layout.packing_index(), persistent=False)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(B, T·n², D_v) patch features -> (B, P, D) image positions."""
        projected = self.multi_modal_projector(features)
        batch, _, width = projected.shape
        n, rows, cols = self.layout.patches_per_side, self.layout.tile_rows, self.layout.tile_cols
        tiles = projected[:, n * n :].reshape(batch, rows, cols, n, n, width).permute(0, 1, 3, 2, 4, 5)
        newline = self.image_newline.to(projected.dtype).expand(batch, 1, width)
        table = torch.cat([projected[:, : n * n], tiles.reshape(batch, rows * n * cols * n, width), newline], dim=1)
        return table[:, self.packing_index]


def check_supported_config(config: LlavaNextConfig, source: str) -> None:
    """ValueError naming ``source`` and the field unless the image features come from one layer of
    a CLIP tower, without CLS, through a GELU projector."""
    check_feature_selection(config, source, "the packing")
    if config.projector_hidden_act != "gelu":
        raise ValueError(f"{source}: projector_hidden_act={config.projector_hidden_act!r}; only 'gelu' is supported")
    if config.vision_config.model_type != "clip_vision_model":
        raise ValueError(
            f"{source}: vision_config.model_type={config.vision_config.model_type!r}; only a CLIP vision tower "
            "('clip_vision_model', whose CLS token the 'default' strategy drops) is supported"
        )


def default_image_processor(config: LlavaNextConfig) -> LlavaNextImageProcessor:
    """The image processor of ``config`` for a directory without ``preprocessor_config.json``:
    tiles and base patch of the vision tower's ``image_size``, the config's pinpoints, CLIP's
    statistics and bicubic resizing (the processor's defaults)."""
    tile = config.vision_config.image_size
    return LlavaNextImageProcessor(
        image_grid_pinpoints=[list(p) for p in config.image_grid_pinpoints],
        size={"shortest_edge": tile},
        crop_size={"height": tile, "width": tile},
    )


def read_image_processor(path: Path, config: LlavaNextConfig) -> LlavaNextImageProcessor:
    """The image processor of the checkpoint at ``path`` (``default_image_processor`` without a
    ``preprocessor_config.json``); ValueError naming the file for another processor type or for
    pinpoints other than ``config``'s (the processor tiles with its own, the model packs with the
    config's)."""
    config_file = path / PREPROCESSOR_CONFIG
    if not config_file.is_file():
        return default_image_processor(config)
    processor_type = json.loads(config_file.read_text()).get("image_processor_type")
    if processor_type not in IMAGE_PROCESSOR_TYPES:
        raise ValueError(
            f"{config_file}: image_processor_type={processor_type!r}; expected one of {list(IMAGE_PROCESSOR_TYPES)}"
        )
    processor = LlavaNextImageProcessor.from_pretrained(str(path))
    processor_pinpoints = [list(p) for p in processor.image_grid_pinpoints]
    if processor_pinpoints != [list(p) for p in config.image_grid_pinpoints]:
        raise ValueError(
            f"{config_file}: image_grid_pinpoints={processor_pinpoints} differ from config.json's "
            f"{config.image_grid_pinpoints}; LLaVA-NeXT tiles with the processor's and packs with the config's"
        )
    return processor


class LlavaNextBackbone(SplicedDecoder):
    """LLaVA-NeXT behind ``GsvaModel``'s multimodal-LLM interface, for S×S images."""

    def __init__(
        self,
        config: LlavaNextConfig,
        language_model: PreTrainedModel,
        vision_tower: PreTrainedModel,
        mm_projector: LlavaNextProjector,
        image_processor: LlavaNextImageProcessor,
    ) -> None:
        super().__init__()
        self.hf_config = config
        """The checkpoint's config; not called ``config``: peft takes a module with a
        ``config.model_type`` for a transformers model and applies that type's weight-renaming rules
        to it, which LLaVA-NeXT has and this module's layout does not follow."""
        self.language_model = language_model
        self.vision_tower = vision_tower
        self.mm_projector = mm_projector
        self.image_processor = image_processor

    @classmethod
    def from_hf(
        cls, hf: LlavaNextForConditionalGeneration, image_size: int, image_processor: LlavaNextImageProcessor | None = None
    ) -> LlavaNextBackbone:
        """The parts of ``hf`` (shared, not copied) as a backbone for ``image_size``² images;
        ``image_processor`` None = ``default_image_processor``."""
        config = hf.config
        check_supported_config(config, config.name_or_path or type(hf).__name__)
        vision = config.vision_config
        layout = AnyresLayout.of(image_size, vision.image_size, vision.patch_size, config.image_grid_pinpoints)
        projector = LlavaNextProjector(hf.model.multi_modal_projector, hf.model.image_newline, layout)
        processor = image_processor if image_processor is not None else default_image_processor(config)
        return cls(config, causal_lm_of(hf), hf.model.vision_tower, projector, processor)

    @property
    def hidden_size(self) -> int:
        return self.language_model.config.hidden_size

    @property
    def layout(self) -> AnyresLayout:
        """The tiles and packing of this backbone's image size."""
        return self.mm_projector.layout

    @property
    def image_token_count(self) -> int:
        """P, the sequence positions of one image: n² + h·(w + 1)."""
        return self.mm_projector.packing_index.numel()

    def pixel_values(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) uint8 RGB -> (B, T, 3, t, t) float32 on the images' device: the image
        processor's base patch and tiles of each image (t: the vision tower's ``image_size``)."""
        side = self.layout.image_size
        if images.shape[-2:] != (side, side):
            raise ValueError(
                f"images of {tuple(images.shape[-2:])} pixels; this LLaVA-NeXT adapter was built for {side}² images "
                "(data.clip_image_size)"
            )
        pixels = self.image_processor(list(images), return_tensors="pt", input_data_format="channels_first")["pixel_values"]
        tile = self.hf_config.vision_config.image_size
        expected = (images.shape[0], self.layout.patch_count, 3, tile, tile)
        if tuple(pixels.shape) != expected:
            raise ValueError(
                f"the image processor made pixel values of shape {tuple(pixels.shape)} for {side}² images; the model's "
                f"config (image_grid_pinpoints, vision_config.image_size) expects {expected}"
            )
        return pixels

    @property
    def vision_encoder(self) -> nn.Module:
        """The frozen vision part whose output a feature cache holds (the vision tower)."""
        return self.vision_tower

    def feature_settings(self) -> dict[str, Any]:
        """What, beside the encoder's weights and input size, decides the cached features."""
        return {"vision_feature_layer": self.hf_config.vision_feature_layer, "image_processor": self.image_processor.to_dict()}

    def vision_feature_shape(self, image_size: int) -> tuple[int, int]:
        """(T·n², D_v) of ``vision_features`` for (B, 3, image_size, image_size) images."""
        if image_size != self.layout.image_size:
            raise ValueError(f"this LLaVA-NeXT adapter was built for {self.layout.image_size}² images, not {image_size}²")
        return (self.layout.feature_count, self.vision_tower.config.hidden_size)

    def vision_features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) uint8 -> (B, T·n², D_v) patch features (no CLS) of the frozen tower's layer
        ``vision_feature_layer`` for the base patch then each tile, before the projector;
        contiguous, like features read from a cache."""
        pixels = self.pixel_values(images)
        tiles = pixels.flatten(0, 1).to(self.vision_tower.dtype)
        outputs = self.vision_tower(pixel_values=tiles, output_hidden_states=True)
        check_hidden_state_count(outputs.hidden_states, self.vision_tower.config.num_hidden_layers)
        selected = outputs.hidden_states[self.hf_config.vision_feature_layer][:, 1:]
        return selected.reshape(images.shape[0], -1, selected.shape[-1]).contiguous()

    lora_target_modules = staticmethod(decoder_lora_target_modules)

    def hf_model(self) -> LlavaNextForConditionalGeneration:
        """A ``LlavaNextForConditionalGeneration`` made of this backbone's parts (shared, not
        copied), its config updated to the current token table and embedding tying."""
        hf = hf_model_around(LlavaNextForConditionalGeneration, self.hf_config, self.language_model)
        hf.model.vision_tower = self.vision_tower
        hf.model.multi_modal_projector = self.mm_projector.multi_modal_projector
        hf.model.image_newline = self.mm_projector.image_newline
        return hf

    def save_pretrained(self, directory: str | Path) -> None:
        """Write the model (``config.json`` + safetensors) and its image processor
        (``preprocessor_config.json``) in the transformers layout; LoRA must be merged first."""
        check_lora_merged(self.language_model)
        self.hf_model().save_pretrained(str(directory))
        self.image_processor.save_pretrained(str(directory))


def load_llava_next(path: str | Path, dtype: torch.dtype, image_size: int) -> LlavaNextBackbone:
    """Load a ``save_pretrained`` directory of ``LlavaNextForConditionalGeneration`` in ``dtype`` as
    a backbone for ``image_size``² images (``data.clip_image_size``); ValueError naming the
    directory for another model type, an unsupported setting or a missing weight, checked before
    the weights are read."""
    path = Path(path)
    check_model_type(
        path, LLAVA_NEXT_MODEL_TYPE, "a LlavaNextForConditionalGeneration checkpoint, e.g. llava-hf/llava-v1.6-mistral-7b-hf"
    )
    config = LlavaNextConfig.from_pretrained(str(path))
    check_supported_config(config, str(path))
    processor = read_image_processor(path, config)
    hf = load_checked(LlavaNextForConditionalGeneration, path, dtype, config=config)
    return LlavaNextBackbone.from_hf(hf, image_size, processor)
