"""Splicing image features into a token sequence, shared by every backbone.

A conversation holds one image placeholder (``IMAGE_TOKEN_INDEX``); splicing replaces it by the P
feature vectors of its image, so a row of length L becomes L - 1 + P long.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from gsva.text.special_tokens import IGNORE_INDEX, IMAGE_TOKEN_INDEX


@dataclass
class SplicedInputs:
    inputs_embeds: torch.Tensor
    """(N, L', D) with L' = L - 1 + P (one placeholder replaced by P patch features)."""
    attention_mask: torch.Tensor
    """(N, L') bool."""
    token_ids: torch.Tensor
    """(N, L') long: the input ids moved to their new positions, ``IMAGE_TOKEN_INDEX`` on patches."""
    labels: torch.Tensor | None
    """(N, L') long, ``IGNORE_INDEX`` on patches; None when no labels were given."""


def splice_image_features(
    embed_tokens: Callable[[torch.Tensor], torch.Tensor],
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    image_features: torch.Tensor,
    conv_to_image: torch.Tensor,
    labels: torch.Tensor | None = None,
) -> SplicedInputs:
    """Replace the single image placeholder of each row by the features of its image.

    input_ids, attention_mask, labels: (N, L); image_features: (B, P, D); conv_to_image: (N,);
    ``embed_tokens`` maps (N, L') ids to (N, L', D) embeddings (placeholder ids included: their
    rows are replaced).
    """
    length = input_ids.shape[1]
    patches = image_features.shape[1]
    placeholder = (input_ids == IMAGE_TOKEN_INDEX).to(torch.int64).argmax(dim=1)
    new_positions = torch.arange(length - 1 + patches, device=input_ids.device).unsqueeze(0)
    offset = new_positions - placeholder.unsqueeze(1)
    on_patch = (offset >= 0) & (offset < patches)
    source = torch.where(offset < 0, new_positions, new_positions - patches + 1).clamp(0, length - 1)
    token_ids = torch.where(on_patch, IMAGE_TOKEN_INDEX, input_ids.gather(1, source))
    text_embeds = embed_tokens(token_ids)
    patch_embeds = image_features[conv_to_image.unsqueeze(1), offset.clamp(0, patches - 1)]
    inputs_embeds = torch.where(on_patch.unsqueeze(-1), patch_embeds.to(text_embeds.dtype), text_embeds)
    new_mask = on_patch | attention_mask.gather(1, source)
    new_labels = None
    if labels is not None:
        new_labels = torch.where(on_patch, IGNORE_INDEX, labels.gather(1, source))
    return SplicedInputs(inputs_embeds, new_mask, token_ids, new_labels)


def spliced_positions(input_ids: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, patches: int) -> torch.Tensor:
    """Where the hidden state of token (rows, cols) of ``input_ids`` (N, L) lands after splicing
    ``patches`` features per image: (K,) positions. The placeholder's own state is its last
    patch's (the state that predicts the token after the image). Computed on the device."""
    placeholder = (input_ids == IMAGE_TOKEN_INDEX).to(torch.int64).argmax(dim=1)
    return cols + (cols >= placeholder[rows]).to(cols.dtype) * (patches - 1)
