"""Greedy decoding from spliced prompts, the result every backbone's ``generate_from_embeds``
returns, and the transformers-``generate`` implementation that 1-D-position backbones share."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedModel


@dataclass
class GreedyGeneration:
    tokens: torch.Tensor
    """(N, T) generated ids; after a row's end-of-sequence token, the padding id."""
    states: torch.Tensor
    """(N, T, D) post-norm last-layer state that produced each token (its next-token prediction)."""


def left_align(embeds: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Move each row's valid prefix to the right end: (N, L, D), (N, L) -> left-padded copies."""
    length = mask.shape[1]
    shift = length - mask.long().sum(1, keepdim=True)
    source = (torch.arange(length, device=mask.device).unsqueeze(0) - shift) % length
    aligned_mask = torch.arange(length, device=mask.device).unsqueeze(0) >= shift
    aligned = embeds.gather(1, source.unsqueeze(-1).expand(-1, -1, embeds.shape[-1]))
    return aligned * aligned_mask.unsqueeze(-1).to(aligned.dtype), aligned_mask


@torch.no_grad()
def generate_with_transformers(
    language_model: PreTrainedModel,
    inputs_embeds: torch.Tensor,
    attention_mask: torch.Tensor,
    max_new_tokens: int,
    eos_token_id: int,
    pad_token_id: int,
) -> GreedyGeneration:
    """Greedy decoding with the causal LM's own ``generate`` and KV cache: ``inputs_embeds``
    (N, L', D) with ``attention_mask`` (N, L') marking each row's prompt (a prefix: right
    padding), left-aligned first as ``generate`` expects. For decoders whose positions follow
    the attention mask (1-D RoPE)."""
    embeds, mask = left_align(inputs_embeds, attention_mask)
    output = language_model.generate(
        inputs_embeds=embeds,
        attention_mask=mask.long(),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        output_hidden_states=True,
        return_dict_in_generate=True,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
    )
    steps = len(output.hidden_states)
    states = torch.stack([step[-1][:, -1] for step in output.hidden_states], dim=1)
    return GreedyGeneration(tokens=output.sequences[:, -steps:], states=states)
