"""SAM from the ``segment_anything`` package: the published ViT-H/L/B builders and a tiny one.

Checkpoints (``sam_vit_h_4b8939.pth`` …) are read with ``torch.load(weights_only=True)`` and
loaded strictly: a key that is missing or unexpected is an error that lists the keys.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from segment_anything import sam_model_registry
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer
from segment_anything.modeling import image_encoder

from gsva.config import TinyDims
from gsva.model.mask_decoding import decode_masks, postprocess_masks
from gsva.model.pixels import normalize_sam_images
from gsva.tensor_files import load_tensor_file

PUBLISHED_SAM_TYPES = ("vit_h", "vit_l", "vit_b")
SAM_IMAGES_PER_CHUNK = 4
"""Images encoded together: SAM's global attention holds a (heads, N, N) matrix per image, so
chunks bound the memory of large evaluation batches."""


def relative_position_table(q_size: int, k_size: int, rel_pos: torch.Tensor) -> torch.Tensor:
    """(q_size, k_size, C) relative-position embeddings of one axis, as ``segment_anything``'s
    ``get_rel_pos`` computes them, but with the index built on ``rel_pos``'s device: the original
    indexes a GPU tensor with a CPU index, a blocking copy (a host synchronisation) twice per
    block, 64 per image for ViT-H. Installed in place of the original below."""
    max_distance = int(2 * max(q_size, k_size) - 1)
    if rel_pos.shape[0] != max_distance:
        resized = F.interpolate(rel_pos.reshape(1, rel_pos.shape[0], -1).permute(0, 2, 1), size=max_distance, mode="linear")
        rel_pos = resized.reshape(-1, max_distance).permute(1, 0)
    q_coords = torch.arange(q_size, device=rel_pos.device)[:, None] * max(k_size / q_size, 1.0)
    k_coords = torch.arange(k_size, device=rel_pos.device)[None, :] * max(q_size / k_size, 1.0)
    relative = (q_coords - k_coords) + (k_size - 1) * max(q_size / k_size, 1.0)
    return rel_pos[relative.long()]


image_encoder.get_rel_pos = relative_position_table


def attention_with_relative_positions(self: image_encoder.Attention, x: torch.Tensor) -> torch.Tensor:
    """``segment_anything``'s ``Attention.forward`` as one ``scaled_dot_product_attention`` call.

    x: (B, H, W, C) -> (B, H, W, C). The original multiplies out the (B·heads, HW, HW) scores, adds
    the decomposed relative-position bias (``add_decomposed_rel_pos``: ``rel_h[q, k_h] +
    rel_w[q, k_w]``, both from the unscaled query), takes the softmax and multiplies by the values,
    each a pass over the whole score matrix. Here the bias is the attention mask of one fused call
    (its CPU and GPU kernels never write the scores out). Installed in place of the original below;
    equal to it within float rounding (tested).
    """
    batch, height, width, _ = x.shape
    qkv = self.qkv(x).reshape(batch, height * width, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)  # each (B, heads, HW, d)
    bias = None
    if self.use_rel_pos:
        r_q = q.reshape(batch, self.num_heads, height, width, -1)
        rel_h = torch.einsum("bnhwc,hkc->bnhwk", r_q, relative_position_table(height, height, self.rel_pos_h))
        rel_w = torch.einsum("bnhwc,wkc->bnhwk", r_q, relative_position_table(width, width, self.rel_pos_w))
        # Contiguous terms give a sum laid out query-major, so the flattening below is a view, not a copy.
        bias = rel_h.contiguous().unsqueeze(-1) + rel_w.contiguous().unsqueeze(-2)
        bias = bias.view(batch, self.num_heads, height * width, height * width)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale)
    out = out.view(batch, self.num_heads, height, width, -1).permute(0, 2, 3, 1, 4).reshape(batch, height, width, -1)
    return self.proj(out)


image_encoder.Attention.forward = attention_with_relative_positions


def build_tiny_sam(dims: TinyDims, image_size: int) -> Sam:
    """A randomly initialised SAM with the standard architecture at small sizes."""
    embedding_size = image_size // dims.sam_patch_size
    if dims.sam_global_attn_indexes is not None:
        global_layers = tuple(dims.sam_global_attn_indexes)
    else:
        global_layers = tuple(range(dims.sam_depth)) if dims.sam_window_size == 0 else (dims.sam_depth - 1,)
    return Sam(
        image_encoder=ImageEncoderViT(
            img_size=image_size,
            patch_size=dims.sam_patch_size,
            embed_dim=dims.sam_embed_dim,
            depth=dims.sam_depth,
            num_heads=dims.sam_heads,
            mlp_ratio=4,
            out_chans=dims.prompt_embed_dim,
            qkv_bias=True,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            use_rel_pos=True,
            window_size=dims.sam_window_size,
            global_attn_indexes=global_layers,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=dims.prompt_embed_dim,
            image_embedding_size=(embedding_size, embedding_size),
            input_image_size=(image_size, image_size),
            mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(
                depth=2,
                embedding_dim=dims.prompt_embed_dim,
                mlp_dim=dims.decoder_mlp_dim,
                num_heads=dims.decoder_heads,
            ),
            transformer_dim=dims.prompt_embed_dim,
            iou_head_depth=3,
            iou_head_hidden_dim=dims.prompt_embed_dim,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )


def load_sam_state(sam: Sam, checkpoint: str | Path) -> None:
    """Strictly load a SAM checkpoint in the segment_anything key layout."""
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"SAM checkpoint not found: {path}")
    state = load_tensor_file(path, holds="tensors (a SAM checkpoint holds its state dict only)")
    missing, unexpected = sam.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{path} does not match the SAM architecture: missing {sorted(missing)[:10]} "
            f"({len(missing)} in all), unexpected {sorted(unexpected)[:10]} ({len(unexpected)} in all)"
        )


def build_sam(sam_type: str, checkpoint: str | Path | None, dims: TinyDims, image_size: int) -> Sam:
    """SAM of ``sam_type`` ('vit_h' | 'vit_l' | 'vit_b' | 'tiny'), loaded from ``checkpoint`` if given."""
    if sam_type == "tiny":
        sam = build_tiny_sam(dims, image_size)
    elif sam_type in PUBLISHED_SAM_TYPES:
        if image_size != 1024:
            raise ValueError(f"SAM {sam_type} works at 1024 px; data.sam_image_size is {image_size}")
        sam = sam_model_registry[sam_type](checkpoint=None)
    else:
        raise ValueError(f"unknown SAM type {sam_type!r}; expected one of {PUBLISHED_SAM_TYPES + ('tiny',)}")
    if checkpoint is not None:
        load_sam_state(sam, checkpoint)
    return sam


@dataclass(frozen=True)
class SamHead:
    """``gsva.model.mask_head.MaskHead`` of a ``segment_anything`` SAM."""

    sam: Sam
    image_size: int

    @property
    def prompt_dim(self) -> int:
        return self.sam.prompt_encoder.embed_dim

    def encode(self, images: torch.Tensor, resized_sizes: list[tuple[int, int]], trainable: bool = False) -> torch.Tensor:
        """(B, 3, S, S) uint8, zero-padded bottom-right -> (B, C, S/16, S/16) embeddings of the
        image encoder (frozen unless ``trainable``), ``SAM_IMAGES_PER_CHUNK`` images at a time."""
        encoder = self.sam.image_encoder
        pixels = normalize_sam_images(images, resized_sizes).to(encoder.patch_embed.proj.weight.dtype)
        with torch.set_grad_enabled(trainable and torch.is_grad_enabled()):
            return torch.cat([encoder(chunk) for chunk in pixels.split(SAM_IMAGES_PER_CHUNK)])

    def decode(self, features: torch.Tensor, queries: torch.Tensor, query_to_image: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) embeddings, (Q, C) queries, (Q,) image indices -> (Q, 4h, 4w) logits."""
        return decode_masks(self.sam.mask_decoder, self.sam.prompt_encoder, features, queries, query_to_image)

    def postprocess(
        self, low_res: torch.Tensor, resized_size: tuple[int, int], original_size: tuple[int, int]
    ) -> torch.Tensor:
        """(Q, h', w') logits of one image -> (Q, H, W): upsampled to the padded input, the padding
        cropped away, resized to the original size."""
        return postprocess_masks(low_res, self.image_size, resized_size, original_size)
