"""Model FLOPs of one GSVA training step: what a step must compute, read off the model's sizes.

A multiply-add counts 2 FLOPs; a linear map with W weights applied to T tokens costs 2·T·W.
Attention over T tokens of width d costs 2·T²·d for QKᵀ and 2·T²·d for AV; a causal decoder
needs half of that (2·T²·d in all). For a micro-batch of B images, N conversations with T_n
tokens each once the P patch features of their image are spliced in (T_n = real text tokens - 1
+ P), A supervised answer tokens and Q ``[SEG]`` queries:

- LLM decoder (L layers, width d, frozen linear weights W_lin, LoRA weights W_lora, vocabulary V):
  F_lin = Σ_n 2·T_n·W_lin, F_lora = Σ_n 2·T_n·W_lora, F_attn = Σ_n 2·L·T_n²·d,
  F_head = 2·A·d·V (logits only at supervised positions).
  Backward = the activation gradients of every matmul (1× forward) + weight gradients of the
  trained weights only (LoRA, lm_head: another 1×); attention backward is 2× its forward.
  LLM step = 2·F_lin + 3·F_lora + 3·F_attn + 3·F_head.
- CLIP tower (forward only: frozen, and no trained weight before it), per image with P + 1
  tokens, L_c layers of width d_c: 2·(P+1)·W_clip + 4·L_c·(P+1)²·d_c + patch convolution
  2·P·(3·p²)·d_c; mm projector 2·P·W_proj.
- SAM image encoder (forward only), per image with n = (S/16)² tokens of width d_s: per block
  qkv + proj 2·T_a·W_attn and attention 4·(tokens per window)·T_a·d_s over T_a attended tokens
  (windowed blocks: the padded windows, n_w·w² tokens; global blocks: n), decomposed relative
  positions 2·T_a·(h + w)·d_s, MLP 2·n·W_mlp; patch convolution 2·n·(3·16²)·d_s; neck
  convolutions 2·n·W_neck.
- Mask decoder (trained): its forward FLOPs for one query are counted once with
  ``torch.utils.flop_counter`` (two-way transformer, upscaling, hypernetwork, mask product);
  a training step costs 3× (forward, activation and weight gradients) per query.

Gradient-checkpointing recomputation is not counted (model FLOPs, not hardware FLOPs); norms,
softmax, losses and interpolation are left out (elementwise, negligible next to the matmuls).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from gsva.batch import GsvaBatch
from gsva.model.gsva import GsvaModel
from gsva.model.mask_decoding import decode_masks


@dataclass(frozen=True)
class StepFlops:
    llm: float
    clip: float
    sam_encoder: float
    mask_decoder: float

    @property
    def total(self) -> float:
        return self.llm + self.clip + self.sam_encoder + self.mask_decoder

    def without_frozen_encoders(self) -> float:
        """The step's FLOPs when SAM and CLIP features come from a feature cache."""
        return self.llm + self.mask_decoder


def _cpu_attention_flops(query_shape, key_shape, value_shape, *args, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_attention_backward_flops(grad_out_shape, query_shape, key_shape, value_shape, *args, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


def flop_counter() -> FlopCounterMode:
    """``torch.utils.flop_counter`` that also counts the fused attention kernel CPUs run.

    On CPU, ``scaled_dot_product_attention`` dispatches to ``_scaled_dot_product_flash_attention_for_cpu``,
    which torch's registry does not list (it would count the SAM encoder's attention as 0).
    """
    return FlopCounterMode(
        display=False,
        custom_mapping={
            torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention_flops,
            torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_attention_backward_flops,
        },
    )


def _linear_weights(module: nn.Module, exclude: str | None = None) -> int:
    return sum(
        sub.weight.numel()
        for name, sub in module.named_modules()
        if isinstance(sub, nn.Linear) and (exclude is None or exclude not in name)
    )


def _lora_weights(module: nn.Module) -> int:
    return sum(parameter.numel() for name, parameter in module.named_parameters() if "lora_" in name)


def llm_flops(
    model: GsvaModel, tokens_per_conversation: list[int], answer_tokens: int, full_attention: bool = False
) -> float:
    """LLM decoder forward + backward (see the module docstring); ``full_attention`` counts the
    whole T² score matrix, as an eager (non-causal-aware) kernel computes it."""
    language_model = model.mllm.language_model
    config = language_model.config
    layers = language_model.get_decoder().layers
    frozen = _linear_weights(layers, exclude="lora_")
    lora = _lora_weights(layers)
    vocabulary = language_model.get_output_embeddings().weight.shape[0]
    linear = sum(2 * tokens * frozen for tokens in tokens_per_conversation)
    adapters = sum(2 * tokens * lora for tokens in tokens_per_conversation)
    attention = sum(2 * config.num_hidden_layers * tokens**2 * config.hidden_size for tokens in tokens_per_conversation)
    attention *= 2 if full_attention else 1
    head = 2 * answer_tokens * config.hidden_size * vocabulary
    return 2 * linear + 3 * adapters + 3 * attention + 3 * head


def clip_flops(model: GsvaModel, images: int) -> float:
    """CLIP tower + mm projector forward for ``images`` images."""
    config = model.mllm.vision_tower.config
    patches = (config.image_size // config.patch_size) ** 2
    tokens = patches + 1
    tower = 2 * tokens * _linear_weights(model.mllm.vision_tower) + 4 * config.num_hidden_layers * tokens**2 * config.hidden_size
    patch_conv = 2 * patches * 3 * config.patch_size**2 * config.hidden_size
    projector = 2 * patches * _linear_weights(model.mllm.mm_projector)
    return images * (tower + patch_conv + projector)


def sam_encoder_flops(model: GsvaModel, images: int) -> float:
    """SAM image-encoder forward for ``images`` images."""
    encoder = model.visual_model.image_encoder
    side = model.sam_image_size // encoder.patch_embed.proj.stride[0]
    tokens = side * side
    width = encoder.patch_embed.proj.out_channels
    total = 2 * tokens * encoder.patch_embed.proj.weight.numel()
    for block in encoder.blocks:
        window = block.window_size
        if window > 0:
            padded_side = math.ceil(side / window) * window
            attended, per_window, grid = padded_side**2, window * window, (window, window)
        else:
            attended, per_window, grid = tokens, tokens, (side, side)
        total += 2 * attended * _linear_weights(block.attn)
        total += 4 * attended * per_window * width
        total += 2 * attended * (grid[0] + grid[1]) * width
        total += 2 * tokens * _linear_weights(block.mlp)
    neck = sum(layer.weight.numel() for layer in encoder.neck if isinstance(layer, nn.Conv2d))
    return images * (total + 2 * tokens * neck)


def mask_decoder_flops_per_query(model: GsvaModel) -> float:
    """Forward FLOPs of decoding one query, counted by ``torch.utils.flop_counter``."""
    prompt_encoder = model.visual_model.prompt_encoder
    parameter = next(model.visual_model.mask_decoder.parameters())
    embeddings = torch.zeros((1, prompt_encoder.embed_dim, *prompt_encoder.image_embedding_size), dtype=parameter.dtype, device=parameter.device)
    query = torch.zeros((1, prompt_encoder.embed_dim), dtype=parameter.dtype, device=parameter.device)
    counter = flop_counter()
    with torch.no_grad(), counter:
        decode_masks(model.visual_model.mask_decoder, prompt_encoder, embeddings, query, torch.zeros(1, dtype=torch.long, device=parameter.device))
    return float(counter.get_total_flops())


def step_flops(model: GsvaModel, batch: GsvaBatch, decoder_flops_per_query: float) -> StepFlops:
    """Model FLOPs of one training step on ``batch`` (a host batch: its masks are read)."""
    config = model.mllm.vision_tower.config
    patches = (config.image_size // config.patch_size) ** 2
    tokens = [int(length) - 1 + patches for length in batch.attention_mask.sum(1).tolist()]
    return StepFlops(
        llm=llm_flops(model, tokens, int(batch.answer_rows.numel())),
        clip=clip_flops(model, batch.num_images),
        sam_encoder=sam_encoder_flops(model, batch.num_images),
        mask_decoder=3 * decoder_flops_per_query * int(batch.seg_rows.numel()),
    )
