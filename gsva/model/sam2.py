"""SAM2 (transformers' ``Sam2Model``) as GSVA's mask decoder (``model.mask_decoder: sam2``).

- Preprocessing: ``gsva.model.pixels.normalize_sam2_images`` (the image stretched to the S x S
  square, no padding, ImageNet statistics), as ``Sam2ImageProcessor`` does.
- Encoding: the frozen vision encoder's three FPN levels (``Sam2Features``): the image embedding
  (stride 16, with SAM2's no-memory embedding added) and the two high-resolution levels (strides
  4 and 8) that the mask decoder adds while upscaling. The decoder's own 1x1 projections of the
  high-resolution levels (``conv_s0``, ``conv_s1``) are trained, so they run in ``decode``.
- Decoding: each [SEG] query is ONE sparse prompt token, with SAM2's no-mask dense embedding;
  only mask token 0 (the single-mask output) is computed. ``Sam2MaskDecoder`` with
  ``multimask_output=False`` in eval mode may swap an unstable mask 0 for the best multimask output
  (``dynamic_multimask_via_stability``); GSVA trains mask 0 alone, so that swap is never made here.
  All queries of a batch are decoded together, each with the features of its image
  (``decode_sam2_masks``); ``Sam2MaskDecoder`` itself repeats an image's features once per prompt.
- Postprocessing: the low-resolution logits resized to the original image size, bilinear
  (``Sam2ImageProcessor.post_process_masks``: no padding to crop).

A checkpoint is a ``Sam2Model`` directory in transformers' ``save_pretrained`` layout
(``config.json`` + ``model.safetensors``; ``model_type`` ``sam2``, or ``sam2_video``, whose image
part ``Sam2Model`` reads); without one, a random tiny SAM2 of ``model.tiny``'s ``sam2_*`` sizes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import (
    Sam2Config,
    Sam2HieraDetConfig,
    Sam2MaskDecoderConfig,
    Sam2Model,
    Sam2PromptEncoderConfig,
    Sam2VisionConfig,
)

from gsva.config import TinyDims
from gsva.model.hf_loading import load_checked, transformers_notices_silenced
from gsva.model.mask_decoding import queries_per_chunk
from gsva.model.pixels import normalize_sam2_images

SAM2_MODEL_TYPES = ("sam2", "sam2_video")
"""``model_type`` of the ``config.json`` of a checkpoint ``Sam2Model`` reads."""
SAM2_IMAGES_PER_CHUNK = 4
"""Images encoded together: the global attention blocks hold a (heads, N, N) matrix per image."""
HIERA_STAGES = 4
HIERA_QUERY_POOL_STAGES = 3
"""Stages after the first, each halving the grid: the image embedding is the third FPN level, at
4 × the patch stride (16 px for SAM2's stride of 4)."""


@dataclass(frozen=True)
class Sam2Features:
    """The frozen SAM2 vision encoder's outputs for B images of side S (C = the FPN width)."""

    image_embeddings: torch.Tensor
    """(B, C, h, w): the lowest FPN level with the no-memory embedding added (h = S/16 at SAM2's
    patch stride of 4)."""
    stride4: torch.Tensor
    """(B, C, 4h, 4w): the highest-resolution FPN level, before the decoder's ``conv_s0``."""
    stride8: torch.Tensor
    """(B, C, 2h, 2w): the middle FPN level, before the decoder's ``conv_s1``."""


def tiny_sam2_config(dims: TinyDims, image_size: int) -> Sam2Config:
    """A SAM2 of the standard architecture at ``dims``' small sizes, for ``image_size`` inputs: a
    four-stage Hiera whose width and heads double at each stage, an FPN (and prompt encoder and
    mask decoder) of width ``prompt_embed_dim``."""
    stride = dims.sam2_patch_stride
    if image_size % (stride * 2**HIERA_QUERY_POOL_STAGES):
        raise ValueError(
            f"a tiny SAM2 with model.tiny.sam2_patch_stride={stride} needs data.sam_image_size divisible by "
            f"{stride * 2**HIERA_QUERY_POOL_STAGES}, got {image_size}"
        )
    for key in ("sam2_blocks_per_stage", "sam2_window_sizes"):
        if len(getattr(dims, key)) != HIERA_STAGES:
            raise ValueError(f"model.tiny.{key} needs one value per Hiera stage ({HIERA_STAGES}), got {getattr(dims, key)}")
    widths = [dims.sam2_embed_dim * 2**stage for stage in range(HIERA_STAGES)]
    backbone = Sam2HieraDetConfig(
        hidden_size=widths[0],
        num_attention_heads=dims.sam2_heads,
        image_size=[image_size, image_size],
        patch_kernel_size=[2 * stride - 1] * 2,
        patch_stride=[stride] * 2,
        patch_padding=[stride - 1] * 2,
        blocks_per_stage=list(dims.sam2_blocks_per_stage),
        embed_dim_per_stage=widths,
        num_attention_heads_per_stage=[dims.sam2_heads * 2**stage for stage in range(HIERA_STAGES)],
        window_size_per_stage=list(dims.sam2_window_sizes),
        global_attention_blocks=list(dims.sam2_global_attn_indexes),
    )
    vision = Sam2VisionConfig(
        backbone_config=backbone,
        backbone_channel_list=widths[::-1],
        backbone_feature_sizes=[[image_size // (stride * 2**level)] * 2 for level in range(3)],
        fpn_hidden_size=dims.prompt_embed_dim,
    )
    return Sam2Config(
        vision_config=vision,
        prompt_encoder_config=Sam2PromptEncoderConfig(
            hidden_size=dims.prompt_embed_dim, image_size=image_size, patch_size=4 * stride
        ),
        mask_decoder_config=Sam2MaskDecoderConfig(
            hidden_size=dims.prompt_embed_dim,
            mlp_dim=dims.decoder_mlp_dim,
            num_attention_heads=dims.decoder_heads,
            iou_head_hidden_dim=dims.prompt_embed_dim,
            dynamic_multimask_via_stability=False,
        ),
    )


def build_tiny_sam2(dims: TinyDims, image_size: int) -> Sam2Model:
    """A randomly initialised ``Sam2Model`` of ``tiny_sam2_config``."""
    return Sam2Model(tiny_sam2_config(dims, image_size))


def sam2_model_type(directory: Path) -> str:
    """The ``model_type`` of the ``config.json`` of the SAM2 checkpoint ``directory``;
    FileNotFoundError / ValueError naming ``model.sam2_path`` when it is no SAM2 checkpoint."""
    config_file = directory / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(
            f"SAM2 checkpoint not found: {config_file} does not exist (model.sam2_path={directory}: expected a "
            "transformers Sam2Model directory, as save_pretrained writes it)"
        )
    model_type = json.loads(config_file.read_text()).get("model_type")
    if model_type not in SAM2_MODEL_TYPES:
        raise ValueError(
            f"model.sam2_path={directory}: {config_file} is a {model_type!r} checkpoint, not SAM2 "
            f"(expected model_type {' or '.join(SAM2_MODEL_TYPES)})"
        )
    return model_type


def load_sam2(directory: str | Path, image_size: int) -> Sam2Model:
    """The ``Sam2Model`` of checkpoint ``directory`` in float32; every weight must be there, and
    its input size must be ``image_size`` (``data.sam_image_size``)."""
    directory = Path(directory)
    sam2_model_type(directory)
    with transformers_notices_silenced():
        config = Sam2Config.from_pretrained(str(directory))
    if config.prompt_encoder_config.image_size != image_size:
        raise ValueError(
            f"the SAM2 of model.sam2_path={directory} works at {config.prompt_encoder_config.image_size} px; "
            f"data.sam_image_size is {image_size}"
        )
    return load_checked(Sam2Model, directory, torch.float32, config=config)


def build_sam2(directory: str | Path | None, dims: TinyDims, image_size: int) -> Sam2Model:
    """The SAM2 of checkpoint ``directory`` (``model.sam2_path``), or a random tiny one when None."""
    if directory is None:
        return build_tiny_sam2(dims, image_size)
    return load_sam2(directory, image_size)


def encode_sam2(sam2: Sam2Model, pixels: torch.Tensor) -> Sam2Features:
    """(B, 3, S, S) normalised pixels -> the vision encoder's ``Sam2Features``."""
    fine, middle, coarse = sam2.vision_encoder(pixels).fpn_hidden_states
    image_embeddings = coarse + sam2.no_memory_embedding.reshape(1, -1, 1, 1)
    return Sam2Features(image_embeddings=image_embeddings, stride4=fine, stride8=middle)


def decode_sam2_masks(
    sam2: Sam2Model, features: Sam2Features, queries: torch.Tensor, query_to_image: torch.Tensor
) -> torch.Tensor:
    """Low-resolution mask logits for each query, a chunk of queries at a time
    (``gsva.model.mask_decoding.queries_per_chunk``).

    features: ``Sam2Features`` of B images, embeddings (B, C, h, w).
    queries: (Q, C) sparse prompt embeddings (one token per query).
    query_to_image: (Q,) long, image index of each query.
    Returns (Q, 4h, 4w) mask logits.
    """
    decoder = sam2.mask_decoder
    stride4 = decoder.conv_s0(features.stride4)
    stride8 = decoder.conv_s1(features.stride8)
    source = features.image_embeddings + sam2.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
    position = sam2.get_image_wide_positional_embeddings().to(source.dtype)
    size = queries_per_chunk(features.image_embeddings)
    chunks = [
        _decode_chunk(sam2, source, position, stride4, stride8, queries[start : start + size], query_to_image[start : start + size])
        for start in range(0, queries.shape[0], size)
    ]
    if not chunks:
        height, width = features.image_embeddings.shape[-2:]
        return features.image_embeddings.new_zeros((0, 4 * height, 4 * width))
    return torch.cat(chunks)


def _decode_chunk(
    sam2: Sam2Model,
    source: torch.Tensor,
    position: torch.Tensor,
    stride4: torch.Tensor,
    stride8: torch.Tensor,
    queries: torch.Tensor,
    query_to_image: torch.Tensor,
) -> torch.Tensor:
    """``decode_sam2_masks`` for one chunk: source (B, C, h, w) embeddings plus the dense prompt,
    position (1, C, h, w), stride4 (B, C/8, 4h, 4w) and stride8 (B, C/4, 2h, 2w) projected levels,
    queries (Q, C), query_to_image (Q,) -> (Q, 4h, 4w)."""
    decoder = sam2.mask_decoder
    output_tokens = torch.cat([decoder.obj_score_token.weight, decoder.iou_token.weight, decoder.mask_tokens.weight])
    tokens = torch.cat(
        [output_tokens.unsqueeze(0).expand(queries.shape[0], -1, -1), queries.unsqueeze(1).to(output_tokens.dtype)], dim=1
    ).unsqueeze(1)
    image = source.index_select(0, query_to_image)
    token_states, image_states = decoder.transformer(
        point_embeddings=tokens, image_embeddings=image, image_positional_embeddings=position, attention_similarity=None
    )
    batch, channels, height, width = image.shape
    image_states = image_states.transpose(2, 3).reshape(batch, channels, height, width)
    upscaled = decoder.upscale_conv1(image_states) + stride8.index_select(0, query_to_image)
    upscaled = decoder.activation(decoder.upscale_layer_norm(upscaled))
    upscaled = decoder.activation(decoder.upscale_conv2(upscaled) + stride4.index_select(0, query_to_image))
    hyper = decoder.output_hypernetworks_mlps[0](token_states[:, 0, 2, :])
    _, up_channels, up_height, up_width = upscaled.shape
    masks = torch.bmm(hyper.unsqueeze(1), upscaled.reshape(batch, up_channels, up_height * up_width))
    return masks.reshape(batch, up_height, up_width)


@dataclass(frozen=True)
class Sam2Head:
    """``gsva.model.mask_head.MaskHead`` of a ``Sam2Model``."""

    sam2: Sam2Model
    image_size: int

    @property
    def prompt_dim(self) -> int:
        return self.sam2.config.prompt_encoder_config.hidden_size

    def encode(self, images: torch.Tensor, resized_sizes: list[tuple[int, int]], trainable: bool = False) -> Sam2Features:
        """(B, 3, S, S) uint8, zero-padded bottom-right -> ``Sam2Features`` of the vision encoder
        (frozen unless ``trainable``), ``SAM2_IMAGES_PER_CHUNK`` images at a time."""
        dtype = self.sam2.vision_encoder.backbone.patch_embed.projection.weight.dtype
        pixels = normalize_sam2_images(images, resized_sizes).to(dtype)
        with torch.set_grad_enabled(trainable and torch.is_grad_enabled()):
            parts = [encode_sam2(self.sam2, chunk) for chunk in pixels.split(SAM2_IMAGES_PER_CHUNK)]
        return Sam2Features(
            image_embeddings=torch.cat([part.image_embeddings for part in parts]),
            stride4=torch.cat([part.stride4 for part in parts]),
            stride8=torch.cat([part.stride8 for part in parts]),
        )

    def decode(self, features: Sam2Features, queries: torch.Tensor, query_to_image: torch.Tensor) -> torch.Tensor:
        """(Q, C) queries, (Q,) image indices -> (Q, S/4, S/4) low-resolution logits."""
        return decode_sam2_masks(self.sam2, features, queries, query_to_image)

    def postprocess(
        self, low_res: torch.Tensor, resized_size: tuple[int, int], original_size: tuple[int, int]
    ) -> torch.Tensor:
        """(Q, h', w') logits of one image -> (Q, H, W) at its original size (the whole square is the
        whole image: ``resized_size`` plays no part)."""
        return F.interpolate(low_res.unsqueeze(1), original_size, mode="bilinear", align_corners=False).squeeze(1)
