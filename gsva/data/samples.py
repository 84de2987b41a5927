"""Per-image samples produced by datasets and their collation into the batch contract."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from gsva.batch import GsvaBatch
from gsva.special_tokens import IGNORE_INDEX


@dataclass
class ConversationSample:
    input_ids: list[int]
    labels: list[int]
    target_masks: np.ndarray
    """(T, H, W) uint8: one mask per answer slot, all zeros for ``[REJ]`` slots; T = 0 for a
    conversation without slots (VQA)."""
    slot_exists: list[bool]
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class ImageSample:
    sam_image: torch.Tensor
    """(3, h, w) uint8: longest side resized to S, not padded (see ``transforms.sam_resize``)."""
    clip_image: torch.Tensor
    """(3, C, C) uint8."""
    original_size: tuple[int, int]
    resized_size: tuple[int, int]
    conversations: list[ConversationSample]


def pad_sequences(
    input_ids: list[list[int]], labels: list[list[int]], pad_token_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-pad token rows -> input_ids (N, L), labels (N, L) with ``IGNORE_INDEX`` padding,
    attention_mask (N, L) bool."""
    length = max(len(row) for row in input_ids)
    padded_ids = torch.full((len(input_ids), length), pad_token_id, dtype=torch.long)
    padded_labels = torch.full((len(input_ids), length), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(input_ids), length), dtype=torch.bool)
    for row, (ids, row_labels) in enumerate(zip(input_ids, labels)):
        padded_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        padded_labels[row, : len(row_labels)] = torch.tensor(row_labels, dtype=torch.long)
        attention_mask[row, : len(ids)] = True
    return padded_ids, padded_labels, attention_mask


def pad_sam_images(images: list[torch.Tensor], size: int) -> torch.Tensor:
    """(3, h_b, w_b) uint8 each -> (B, 3, size, size) uint8, zero-padded bottom-right."""
    padded = torch.zeros((len(images), 3, size, size), dtype=torch.uint8)
    for index, image in enumerate(images):
        padded[index, :, : image.shape[1], : image.shape[2]] = image
    return padded


@dataclass(frozen=True)
class Collator:
    """Turns a list of ``ImageSample`` into one ``GsvaBatch`` (picklable for DataLoader workers)."""

    pad_token_id: int
    sam_image_size: int

    def __call__(self, samples: list[ImageSample]) -> GsvaBatch:
        conversations = [conv for sample in samples for conv in sample.conversations]
        input_ids, labels, attention_mask = pad_sequences(
            [conv.input_ids for conv in conversations], [conv.labels for conv in conversations], self.pad_token_id
        )
        conv_to_image = torch.tensor(
            [image_index for image_index, sample in enumerate(samples) for _ in sample.conversations], dtype=torch.long
        )
        return GsvaBatch(
            sam_images=pad_sam_images([sample.sam_image for sample in samples], self.sam_image_size),
            clip_images=torch.stack([sample.clip_image for sample in samples]),
            input_ids=input_ids,
            labels=labels,
            attention_mask=attention_mask,
            conv_to_image=conv_to_image,
            target_masks=[torch.from_numpy(conv.target_masks) for conv in conversations],
            slot_exists=[torch.tensor(conv.slot_exists, dtype=torch.bool) for conv in conversations],
            original_sizes=[sample.original_size for sample in samples],
            resized_sizes=[sample.resized_size for sample in samples],
            metadata=[conv.metadata for conv in conversations],
        )
