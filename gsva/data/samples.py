"""Per-image samples produced by datasets and their collation into the batch contract."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from gsva.batch import GsvaBatch
from gsva.feature_cache import FeatureCache, image_key
from gsva.text.special_tokens import IGNORE_INDEX


@dataclass
class ConversationSample:
    input_ids: list[int]
    labels: list[int]
    target_masks: np.ndarray
    """(T, H, W) uint8: one mask per answer slot, all zeros for ``[REJ]`` slots; T = 0 for a
    conversation without slots (VQA)."""
    slot_exists: list[bool]
    metadata: dict[str, Any] = field(default_factory=dict)
    slot_positions: list[int] = field(default_factory=list)
    """Position in ``input_ids`` of each slot token (``[SEG]`` or ``[REJ]``), in slot order."""
    slot_is_seg: list[bool] = field(default_factory=list)
    """Per slot: answered ``[SEG]`` (it gets a mask query) rather than ``[REJ]``."""


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
    """(3, h_b, w_b) uint8 each -> (B, 3, size, size) uint8, zero-padded bottom-right.

    Stored channels-last (a permuted view of (B, size, size, 3)): the resized images arrive as
    views of (h, w, 3) arrays, so every row is copied whole rather than byte by byte.
    """
    padded = torch.zeros((len(images), size, size, 3), dtype=torch.uint8)
    for index, image in enumerate(images):
        padded[index, : image.shape[1], : image.shape[2]] = image.permute(1, 2, 0)
    return padded.permute(0, 3, 1, 2)


def answer_positions(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """labels (N, L) -> rows (A,), cols (A,), targets (A,): each position t whose next token
    ``labels[row, t + 1]`` is supervised, in row-major order."""
    supervised = labels[:, 1:] != IGNORE_INDEX
    rows, cols = supervised.nonzero(as_tuple=True)
    return rows, cols, labels[:, 1:][supervised]


@dataclass
class SlotQueries:
    """The ``[SEG]`` mask queries of a batch and their targets (see ``GsvaBatch.seg_*``)."""

    rows: torch.Tensor
    cols: torch.Tensor
    masks_per_image: list[torch.Tensor]
    rejected_per_image: list[int]


def slot_queries(samples: list[ImageSample]) -> SlotQueries:
    """Queries ordered by conversation then slot; query = the position before its ``[SEG]``."""
    rows, cols, masks_per_image, rejected_per_image = [], [], [], []
    conversation = 0
    for sample in samples:
        height, width = sample.original_size
        image_masks, rejected = [], 0
        for conv in sample.conversations:
            for slot, (position, is_seg) in enumerate(zip(conv.slot_positions, conv.slot_is_seg)):
                if is_seg:
                    rows.append(conversation)
                    cols.append(position - 1)
                    image_masks.append(conv.target_masks[slot])
                else:
                    rejected += 1
            conversation += 1
        stacked = np.stack(image_masks) if image_masks else np.zeros((0, height, width), dtype=np.uint8)
        masks_per_image.append(torch.from_numpy(stacked))
        rejected_per_image.append(rejected)
    return SlotQueries(
        rows=torch.tensor(rows, dtype=torch.long),
        cols=torch.tensor(cols, dtype=torch.long),
        masks_per_image=masks_per_image,
        rejected_per_image=rejected_per_image,
    )


@dataclass(frozen=True)
class Collator:
    """Turns a list of ``ImageSample`` into one ``GsvaBatch`` (picklable for DataLoader workers).

    With a ``feature_cache``, the frozen encoders' outputs of the images are read from it (memory
    mapped, in the worker) when every image of the batch is there; otherwise the model computes them.
    """

    pad_token_id: int
    sam_image_size: int
    feature_cache: FeatureCache | None = None

    def __call__(self, samples: list[ImageSample]) -> GsvaBatch:
        conversations = [conv for sample in samples for conv in sample.conversations]
        input_ids, labels, attention_mask = pad_sequences(
            [conv.input_ids for conv in conversations], [conv.labels for conv in conversations], self.pad_token_id
        )
        conv_to_image = torch.tensor(
            [image_index for image_index, sample in enumerate(samples) for _ in sample.conversations], dtype=torch.long
        )
        queries = slot_queries(samples)
        answer_rows, answer_cols, answer_targets = answer_positions(labels)
        cached = None
        if self.feature_cache is not None:
            cached = self.feature_cache.get_batch([image_key(sample.sam_image, sample.clip_image) for sample in samples])
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
            seg_rows=queries.rows,
            seg_cols=queries.cols,
            seg_masks=queries.masks_per_image,
            rejected_per_image=queries.rejected_per_image,
            answer_rows=answer_rows,
            answer_cols=answer_cols,
            answer_targets=answer_targets,
            sam_features=cached[0] if cached is not None else None,
            clip_features=cached[1] if cached is not None else None,
            metadata=[conv.metadata for conv in conversations],
        )
