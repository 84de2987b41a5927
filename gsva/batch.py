"""The batch contract between ``gsva.data`` and ``gsva.model`` (defined once, used by both).

Shapes use B = images in the batch, N = conversations, L = padded token length, S = SAM input
size, C = CLIP input size, T_i = answer slots of conversation i, (H_b, W_b) = original size of
the image of that conversation, Q = ``[SEG]`` slots of the batch, A = supervised answer tokens.

The index fields (``seg_*``, ``answer_*``, ``rejected_per_image``) are computed by the collator on
the host, so that the training forward never has to read a device tensor back to learn a count or
a position (no host synchronisation in the hot loop).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any, Callable

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
    seg_rows: torch.Tensor
    """(Q,) long: conversation of each ``[SEG]`` slot; queries are ordered by conversation, then
    slot (so by image: conversations are grouped by image)."""
    seg_cols: torch.Tensor
    """(Q,) long: position in ``input_ids`` of the token just BEFORE each ``[SEG]`` slot (its
    hidden state is the slot's mask query)."""
    seg_masks: list[torch.Tensor]
    """per image (Q_b, H_b, W_b) uint8: the target masks of the image's ``[SEG]`` slots, in query
    order (Q_b = 0 for an image without one)."""
    rejected_per_image: list[int]
    """per image, the number of slots answered ``[REJ]``."""
    answer_rows: torch.Tensor
    """(A,) long: conversation of each supervised next-token prediction."""
    answer_cols: torch.Tensor
    """(A,) long: position t in ``input_ids`` whose next token ``labels[row, t + 1]`` is supervised."""
    answer_targets: torch.Tensor
    """(A,) long: ``labels[answer_rows, answer_cols + 1]``."""
    sam_features: torch.Tensor | None = None
    """(B, C, S/16, S/16) SAM image embeddings read from a feature cache (None: the model encodes)."""
    clip_features: torch.Tensor | None = None
    """(B, P, D_v) CLIP patch features (before the mm projector) read from a feature cache."""
    metadata: list[dict[str, Any]] = field(default_factory=list)
    """per conversation: image_id, image_path, expressions, kinds, ... (never used by the model)."""

    @property
    def num_images(self) -> int:
        return self.sam_images.shape[0]

    def to(self, device: torch.device | str) -> "GsvaBatch":
        """Move every tensor (and every tensor of a list field) to ``device``, asynchronously when
        the batch is pinned."""
        return self._map_tensors(lambda tensor: tensor.to(device=device, non_blocking=True))

    def pin_memory(self) -> "GsvaBatch":
        """Page-locked copies of every tensor (DataLoader ``pin_memory=True`` calls this)."""
        return self._map_tensors(lambda tensor: tensor.pin_memory())

    def _map_tensors(self, function: Callable[[torch.Tensor], torch.Tensor]) -> "GsvaBatch":
        def apply(value: Any) -> Any:
            if isinstance(value, torch.Tensor):
                return function(value)
            if isinstance(value, list) and value and isinstance(value[0], torch.Tensor):
                return [function(item) for item in value]
            return value

        return replace(self, **{f.name: apply(getattr(self, f.name)) for f in fields(self)})
