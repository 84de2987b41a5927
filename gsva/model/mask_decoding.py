"""Batched SAM mask decoding for many queries over many images, and mask post-processing.

``MaskDecoder.forward`` serves one image per call (it repeats that image's embedding once per
prompt). Here every query carries the index of its image, so all queries of a batch go through
the decoder's two-way transformer (``gsva.model.two_way_transformer``: the same attention with the
projections on the token side), upscaling and first hypernetwork MLP in ONE call. Only the
single-mask output (``multimask_output=False``, mask token 0) is computed, as GSVA uses.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from segment_anything.modeling import MaskDecoder, PromptEncoder

from gsva.model.two_way_transformer import two_way_transformer


CHUNK_BYTES = {"cpu": 32 * 2**20}
"""Bytes of upscaled mask features decoded together, by device type (others:
``DEFAULT_CHUNK_BYTES``). Each query carries its own copy of the image embedding through the
two-way transformer and the upscaling, so chunks bound the memory of large evaluation batches; on
a CPU, chunks of about 32 MiB also keep the working set near the caches, forward and backward. At
the tiny reference shape (8 MiB of upscaled features per query, so 4 queries a chunk) a 2-core
training step with 10 expressions per image took 5.07 s in one call and 4.26 s in chunks. The
demo's SAM (32 KiB per query) decodes a whole batch at once: chunks of 4 queries made its SAM
stage 2.9x slower at 2 threads (2.98 against 8.49 steps/s). A GPU, which waits on kernel launches
at these sizes, decodes larger chunks."""
DEFAULT_CHUNK_BYTES = 64 * 2**20


def queries_per_chunk(image_embeddings: torch.Tensor) -> int:
    """How many queries ``decode_masks`` decodes together on (B, C, h, w) ``image_embeddings``:
    as many as fit their upscaled features, (4h, 4w, C/8) each, in the device's ``CHUNK_BYTES``."""
    _, channels, height, width = image_embeddings.shape
    per_query = 16 * height * width * (channels // 8) * image_embeddings.element_size()
    return max(1, CHUNK_BYTES.get(image_embeddings.device.type, DEFAULT_CHUNK_BYTES) // per_query)


def decode_masks(
    mask_decoder: MaskDecoder,
    prompt_encoder: PromptEncoder,
    image_embeddings: torch.Tensor,
    queries: torch.Tensor,
    query_to_image: torch.Tensor,
) -> torch.Tensor:
    """Low-resolution mask logits for each query, decoded a chunk of queries at a time
    (``queries_per_chunk``).

    image_embeddings: (B, C, h, w) SAM image embeddings.
    queries: (Q, C) sparse prompt embeddings (one token per query).
    query_to_image: (Q,) long, image index of each query.
    Returns (Q, 4h, 4w) mask logits.
    """
    size = queries_per_chunk(image_embeddings)
    chunks = [
        _decode_chunk(mask_decoder, prompt_encoder, image_embeddings, queries[start : start + size], query_to_image[start : start + size])
        for start in range(0, queries.shape[0], size)
    ]
    if not chunks:
        height, width = image_embeddings.shape[-2:]
        return image_embeddings.new_zeros((0, 4 * height, 4 * width))
    return torch.cat(chunks)


def _decode_chunk(
    mask_decoder: MaskDecoder,
    prompt_encoder: PromptEncoder,
    image_embeddings: torch.Tensor,
    queries: torch.Tensor,
    query_to_image: torch.Tensor,
) -> torch.Tensor:
    """``decode_masks`` for one chunk of queries: (Q, C), (Q,) -> (Q, 4h, 4w)."""
    dense = prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
    source = image_embeddings.index_select(0, query_to_image) + dense
    position = dense_positional_encoding(prompt_encoder).to(source.dtype)
    output_tokens = torch.cat([mask_decoder.iou_token.weight, mask_decoder.mask_tokens.weight], dim=0)
    tokens = torch.cat(
        [output_tokens.unsqueeze(0).expand(queries.shape[0], -1, -1), queries.unsqueeze(1).to(output_tokens.dtype)],
        dim=1,
    )
    batch, channels, height, width = source.shape
    token_states, source_states = two_way_transformer(mask_decoder.transformer, source, position, tokens)
    upscaled = mask_decoder.output_upscaling(source_states.transpose(1, 2).reshape(batch, channels, height, width))
    hyper = mask_decoder.output_hypernetworks_mlps[0](token_states[:, 1, :])
    up_batch, up_channels, up_height, up_width = upscaled.shape
    masks = torch.bmm(hyper.unsqueeze(1), upscaled.reshape(up_batch, up_channels, up_height * up_width))
    return masks.reshape(up_batch, up_height, up_width)


def dense_positional_encoding(prompt_encoder: PromptEncoder) -> torch.Tensor:
    """(1, C, h, w) SAM's dense positional encoding of the image-embedding grid, computed in
    float32 whatever the model's dtype (``PromptEncoder.get_dense_pe`` multiplies float32 grid
    coordinates by the buffer in the model's dtype, which fails once the model is bf16)."""
    frequencies = prompt_encoder.pe_layer.positional_encoding_gaussian_matrix.float()
    height, width = prompt_encoder.image_embedding_size
    grid = torch.ones((height, width), device=frequencies.device)
    y = (grid.cumsum(dim=0) - 0.5) / height
    x = (grid.cumsum(dim=1) - 0.5) / width
    angles = 2 * math.pi * ((2 * torch.stack([x, y], dim=-1) - 1) @ frequencies)
    return torch.cat([angles.sin(), angles.cos()], dim=-1).permute(2, 0, 1).unsqueeze(0)


def postprocess_masks(
    low_res: torch.Tensor, input_size: int, resized_size: tuple[int, int], original_size: tuple[int, int]
) -> torch.Tensor:
    """(Q, h', w') logits of one image -> (Q, H, W) logits at the original size.

    Upsample to the padded SAM input, crop the padding away, resize to the original image.
    """
    masks = F.interpolate(low_res.unsqueeze(1), (input_size, input_size), mode="bilinear", align_corners=False)
    masks = masks[..., : resized_size[0], : resized_size[1]]
    masks = F.interpolate(masks, original_size, mode="bilinear", align_corners=False)
    return masks.squeeze(1)
