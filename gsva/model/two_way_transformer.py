"""SAM's two-way transformer for many image copies and a few tokens, with the image-side
projections moved to the token side.

Every query decodes its own copy of an image embedding (N = 64 x 64 positions, C = 256 channels)
with n = 6 tokens. ``segment_anything``'s cross attentions project all N image positions
(C -> C/2 for keys, values and queries, and the C/2 -> C output projection): four N x C x C/2
products per block and query, most of the decoder's work. The same attention, computed with the
projection weights applied to the few tokens instead, needs N x C x (heads x n) products: 48
columns instead of 128 for SAM's 8 heads and 6 tokens.

For head h with query/key/value/output weights Wq_h, Wk_h, Wv_h (d x C) and Wo_h (C x d):

- tokens attending to the image (keys K = image + pe, values V = image):
  scores = (q_h Wk_h) K^T + q_h bk_h (a constant per row), and
  out_h = (A_h V) Wv_h^T + bv_h (the rows of A_h sum to 1);
- the image attending to tokens (image queries X = image + pe, token keys k_h and values v_h):
  scores = X (Wq_h^T k_h^T) + bq_h k_h^T, and the output projection of A_h v_h is A_h (v_h Wo_h^T).

This is the same function as ``TwoWayTransformer.forward`` (same weights, same result up to
float rounding: summation order differs) and its gradients flow to the same parameters.
"""

from __future__ import annotations

import math

import torch
from segment_anything.modeling.transformer import Attention, TwoWayTransformer


def two_way_transformer(
    transformer: TwoWayTransformer, image: torch.Tensor, image_pe: torch.Tensor, tokens: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``transformer(image, image_pe, tokens)``, computed with token-side projections.

    image: (B, C, H, W) one image embedding per query (B queries).
    image_pe: (B or 1, C, H, W) positional encoding of the image grid.
    tokens: (B, n, C) output tokens and prompt tokens of each query.
    Returns the processed tokens (B, n, C) and image (B, H*W, C).
    """
    keys = image.flatten(2).transpose(1, 2)
    key_pe = image_pe.flatten(2).transpose(1, 2)
    queries = tokens
    for layer in transformer.layers:
        if layer.skip_first_layer_pe:
            queries = layer.self_attn(q=queries, k=queries, v=queries)
        else:
            with_pe = queries + tokens
            queries = queries + layer.self_attn(q=with_pe, k=with_pe, v=queries)
        queries = layer.norm1(queries)
        keys_with_pe = keys + key_pe  # both cross attentions of the block read the image before its update
        queries = layer.norm2(queries + tokens_attend_to_image(layer.cross_attn_token_to_image, queries + tokens, keys_with_pe, keys))
        queries = layer.norm3(queries + layer.mlp(queries))
        keys = layer.norm4(keys + image_attends_to_tokens(layer.cross_attn_image_to_token, keys_with_pe, queries + tokens, queries))
    final = tokens_attend_to_image(transformer.final_attn_token_to_image, queries + tokens, keys + key_pe, keys)
    return transformer.norm_final_attn(queries + final), keys


def _head_weights(linear: torch.nn.Linear, heads: int) -> torch.Tensor:
    """(heads, d, C) rows of a C -> heads*d projection, head by head (SAM's head split)."""
    return linear.weight.view(heads, -1, linear.weight.shape[1])


def tokens_attend_to_image(attention: Attention, token_q: torch.Tensor, image_k: torch.Tensor, image_v: torch.Tensor) -> torch.Tensor:
    """``attention(q=token_q, k=image_k, v=image_v)`` without projecting the image.

    token_q: (B, n, C); image_k, image_v: (B, N, C). Returns (B, n, C).
    """
    batch, count, channels = token_q.shape
    heads = attention.num_heads
    q = attention.q_proj(token_q).view(batch, count, heads, -1)
    scale = 1.0 / math.sqrt(q.shape[-1])
    key_side = torch.einsum("bthd,hdc->bhtc", q, _head_weights(attention.k_proj, heads)).reshape(batch, heads * count, channels)
    # The key bias adds one constant per row, which the softmax ignores; it is kept so that the
    # bias gets its (zero) gradient as in segment_anything, and every trained parameter is used.
    key_bias = torch.einsum("bthd,hd->bht", q, attention.k_proj.bias.view(heads, -1)).reshape(batch, heads * count, 1)
    weights = torch.softmax(torch.baddbmm(key_bias, key_side, image_k.transpose(1, 2)) * scale, dim=-1)  # (B, heads*n, N)
    pooled = torch.bmm(weights, image_v).view(batch, heads, count, channels)
    values = torch.einsum("bhtc,hdc->bthd", pooled, _head_weights(attention.v_proj, heads)) + attention.v_proj.bias.view(heads, -1)
    return attention.out_proj(values.reshape(batch, count, -1))


def image_attends_to_tokens(attention: Attention, image_q: torch.Tensor, token_k: torch.Tensor, token_v: torch.Tensor) -> torch.Tensor:
    """``attention(q=image_q, k=token_k, v=token_v)`` without projecting the image.

    image_q: (B, N, C); token_k, token_v: (B, n, C). Returns (B, N, C).
    """
    batch, positions, channels = image_q.shape
    count, heads = token_k.shape[1], attention.num_heads
    k = attention.k_proj(token_k).view(batch, count, heads, -1)
    v = attention.v_proj(token_v).view(batch, count, heads, -1)
    scale = 1.0 / math.sqrt(k.shape[-1])
    query_side = torch.einsum("hdc,bthd->bhtc", _head_weights(attention.q_proj, heads), k).reshape(batch, heads * count, channels)
    query_bias = torch.einsum("hd,bthd->bht", attention.q_proj.bias.view(heads, -1), k).reshape(batch, 1, heads * count)
    scores = (torch.bmm(image_q, query_side.transpose(1, 2)) + query_bias) * scale  # (B, N, heads*n)
    weights = torch.softmax(scores.view(batch, positions, heads, count), dim=-1).view(batch, positions, heads * count)
    output = attention.out_proj.weight.view(channels, heads, -1)  # (C, heads, d)
    value_side = torch.einsum("bthd,chd->bhtc", v, output).reshape(batch, heads * count, channels)
    return torch.baddbmm(attention.out_proj.bias.expand(batch, 1, channels), weights, value_side)
