"""The batch contract between ``gsva.data`` and ``gsva.model`` (defined once, used by both).

Shapes use B = images in the batch, N = conversations, L = padded token length, S = SAM input
size, C = CLIP input size, T_i = answer slots of conversation i, (H_b, W_b) = original size of
the image of that conversation.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

import torch


@dataclass
class GsvaBatch:
    sam_images: torch.Tensor
    """(B, 3, S, S) uint8 RGB: longest side resized to S, zero-padded bottom-right. The model
    normalises on the device (and zeroes the padding of the normalised image, as SAM does)."""
    clip_images: torch.Tensor
    """(B, 3, C, C) uint8 RGB: shortest side resized to C, centre-cropped; normalised by the model."""
    input_ids: torch.Tensor
    """(N, L) long: token ids; the image placeholder is ``IMAGE_TOKEN_INDEX``; right-padded."""
    labels: torch.Tensor
    """(N, L) long: ``IGNORE_INDEX`` outside the assistant's answer (and on padding)."""
    attention_mask: torch.Tensor
    """(N, L) bool: False on padding."""
    conv_to_image: torch.Tensor
    """(N,) long: index into the B images of each conversation. Several may share an image."""
    target_masks: list[torch.Tensor]
    """per conversation (T_i, H, W) uint8 in {0, 1} at the original image size; all zero for
    ``[REJ]``; T_i = 0 for a conversation without slots (VQA)."""
    slot_exists: list[torch.Tensor]
    """per conversation (T_i,) bool: True where the answer slot is ``[SEG]`` (the target exists)."""
    original_sizes: list[tuple[int, int]]
    """per image (H, W) of the original image."""
    resized_sizes: list[tuple[int, int]]
    """per image (h, w) after resizing the longest side to S (before padding)."""
    metadata: list[dict[str, Any]] = field(default_factory=list)
    """per conversation: image_id, image_path, expressions, kinds, ... (never used by the model)."""

    @property
    def num_images(self) -> int:
        return self.sam_images.shape[0]

    def to(self, device: torch.device | str) -> "GsvaBatch":
        """Move every tensor (and every tensor of a list field) to ``device``."""

        def move(value: Any) -> Any:
            if isinstance(value, torch.Tensor):
                return value.to(device=device, non_blocking=True)
            if isinstance(value, list) and value and isinstance(value[0], torch.Tensor):
                return [item.to(device=device, non_blocking=True) for item in value]
            return value

        return replace(self, **{f.name: move(getattr(self, f.name)) for f in fields(self)})
