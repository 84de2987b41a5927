"""The promptable mask decoder GSVA feeds its [SEG] queries to (``model.mask_decoder``), behind
one interface: ``sam`` (``segment_anything``'s SAM, ``gsva.model.sam.SamHead``) or ``sam2``
(transformers' ``Sam2Model``, ``gsva.model.sam2.Sam2Head``).

The model itself lives in ``GsvaModel.visual_model`` (its parameters are ``visual_model.*``, the
mask decoder's ``visual_model.mask_decoder.*`` in both cases); a head is a stateless view of it.
"""

from __future__ import annotations

from typing import Protocol, Union

import torch
from segment_anything.modeling import Sam
from transformers import Sam2Model

from gsva.config import ModelConfig
from gsva.model.sam import SamHead, build_sam
from gsva.model.sam2 import Sam2Features, Sam2Head, build_sam2

ImageFeatures = Union[torch.Tensor, Sam2Features]
"""What ``MaskHead.encode`` gives for B images: SAM's (B, C, h, w) embeddings, or SAM2's three
feature levels."""


class MaskHead(Protocol):
    """What ``GsvaModel`` uses of its mask decoder."""

    @property
    def prompt_dim(self) -> int:
        """Width C of a sparse prompt token (the query projector's output)."""

    def encode(self, images: torch.Tensor, resized_sizes: list[tuple[int, int]], trainable: bool = False) -> ImageFeatures:
        """(B, 3, S, S) uint8 images, image b zero-padded bottom-right beyond ``resized_sizes[b]``
        -> the image encoder's features; no gradient unless ``trainable`` (GSVA keeps the encoder
        frozen; the demo's component stage trains it)."""

    def decode(self, features: ImageFeatures, queries: torch.Tensor, query_to_image: torch.Tensor) -> torch.Tensor:
        """(Q, C) queries, each decoded on the features of image ``query_to_image[q]`` (Q,) ->
        (Q, h', w') low-resolution mask logits (single-mask output), all queries in one batch."""

    def postprocess(
        self, low_res: torch.Tensor, resized_size: tuple[int, int], original_size: tuple[int, int]
    ) -> torch.Tensor:
        """(Q, h', w') logits of one image -> (Q, H, W) logits at its ``original_size``."""


def mask_head_of(visual_model: Sam | Sam2Model, image_size: int) -> MaskHead:
    """The ``MaskHead`` of ``visual_model`` for S = ``image_size`` inputs."""
    if isinstance(visual_model, Sam2Model):
        return Sam2Head(visual_model, image_size)
    if isinstance(visual_model, Sam):
        return SamHead(visual_model, image_size)
    raise TypeError(f"no mask head for {type(visual_model).__name__}: expected a SAM or a Sam2Model")


def build_visual_model(cfg: ModelConfig, image_size: int) -> Sam | Sam2Model:
    """The mask decoder's model of ``cfg.mask_decoder`` for ``image_size`` inputs: SAM of
    ``sam_type`` / ``sam_checkpoint``, or SAM2 of ``sam2_path`` (a random tiny one when null)."""
    if cfg.mask_decoder == "sam2":
        return build_sam2(cfg.sam2_path, cfg.tiny, image_size)
    return build_sam(cfg.sam_type, cfg.sam_checkpoint, cfg.tiny, image_size)
