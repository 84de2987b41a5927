"""The language side every backbone shares: token embeddings, splicing the image features in, the
decoder's last-layer states, logits and greedy generation.

A backbone subclasses ``SplicedDecoder`` and sets ``language_model`` (a transformers causal LM:
decoder + ``lm_head``). Decoders whose positions follow the sequence (LLaMA, Qwen2) use it as is;
Qwen2.5-VL overrides ``last_hidden_states`` and ``generate_from_embeds`` to place its M-RoPE
positions from the spliced token ids.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedModel

from gsva.model.generation import GreedyGeneration, generate_with_transformers
from gsva.model.splicing import SplicedInputs, splice_image_features, spliced_positions


class SplicedDecoder(nn.Module):
    language_model: PreTrainedModel

    def embed_tokens(self, token_ids: torch.Tensor) -> torch.Tensor:
        """(…) ids -> (…, D); ``IMAGE_TOKEN_INDEX`` entries embed as id 0 (they are replaced)."""
        return self.language_model.get_input_embeddings()(token_ids.clamp(min=0))

    def splice(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        image_features: torch.Tensor,
        conv_to_image: torch.Tensor,
        labels: torch.Tensor | None = None,
    ) -> SplicedInputs:
        """``splice_image_features`` with this model's token embeddings: input_ids, attention_mask,
        labels (N, L); image_features (B, P, D); conv_to_image (N,)."""
        return splice_image_features(self.embed_tokens, input_ids, attention_mask, image_features, conv_to_image, labels)

    spliced_positions = staticmethod(spliced_positions)

    def last_hidden_states(
        self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor | None, token_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(N, L', D) post-norm output of the decoder's last layer; ``attention_mask`` (N, L') or
        None for causal attention only. ``token_ids`` (the spliced ids) are not needed: positions
        follow the sequence."""
        mask = attention_mask.long() if attention_mask is not None else None
        return self.language_model.get_decoder()(inputs_embeds=inputs_embeds, attention_mask=mask, use_cache=False).last_hidden_state

    def lm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(…, D) -> (…, V)."""
        return self.language_model.get_output_embeddings()(hidden)

    def generate_from_embeds(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor,
        token_ids: torch.Tensor,
        max_new_tokens: int,
        eos_token_id: int,
        pad_token_id: int,
    ) -> GreedyGeneration:
        """Greedy decoding from right-padded spliced prompts (N, L', D) with their (N, L') mask
        (``generate_with_transformers``; ``token_ids`` are not needed)."""
        return generate_with_transformers(
            self.language_model, inputs_embeds, attention_mask, max_new_tokens, eos_token_id, pad_token_id
        )
