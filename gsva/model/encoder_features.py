"""The frozen encoders' outputs a feature cache holds, and the layout that ties a cache to a model.

A record is the SAM image embedding (C, S/16, S/16) and the backbone's frozen vision features
(P, D_v: for LLaVA, the CLIP patch features of ``select_layer`` before the mm projector; for
Qwen2.5-VL, the merger's output; for LLaVA-NeXT, the CLIP features of the base patch and every
anyres tile, before projector and packing), in the model's dtype: exactly what ``GsvaModel`` would compute,
so training from the cache gives the same losses. The layout's fingerprint hashes both encoders'
weights and the preprocessing (input sizes, the backbone's feature settings).
"""

from __future__ import annotations

import torch

from gsva.batch import GsvaBatch
from gsva.feature_cache import FeatureLayout, module_fingerprint
from gsva.model.gsva import GsvaModel


def encoder_layout(model: GsvaModel, clip_image_size: int) -> FeatureLayout:
    """The ``FeatureLayout`` of ``model``'s frozen encoders for vision inputs of
    ``clip_image_size`` (``data.clip_image_size``); hashes their weights: seconds at ViT-H size."""
    if model.cfg.mask_decoder != "sam":
        raise ValueError(
            f"model.mask_decoder={model.cfg.mask_decoder}: the feature cache holds SAM's one image embedding per image, "
            "not SAM2's three feature levels; run without data.feature_cache (and without scripts/precompute_features.py)"
        )
    prompt_encoder = model.visual_model.prompt_encoder
    dtype = model.visual_model.image_encoder.patch_embed.proj.weight.dtype
    settings = {
        "sam_image_size": model.sam_image_size,
        "clip_image_size": clip_image_size,
        **model.mllm.feature_settings(),
        "dtype": str(dtype).removeprefix("torch."),
    }
    fingerprint = module_fingerprint(
        {"sam_image_encoder": model.visual_model.image_encoder, "clip_vision_tower": model.mllm.vision_encoder}, settings
    )
    return FeatureLayout(
        fingerprint=fingerprint,
        sam_shape=(prompt_encoder.embed_dim, *prompt_encoder.image_embedding_size),
        clip_shape=model.mllm.vision_feature_shape(clip_image_size),
        dtype=settings["dtype"],
    )


@torch.no_grad()
def encode_features(model: GsvaModel, batch: GsvaBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, C, S/16, S/16) SAM embeddings and (B, P, D_v) frozen vision features of the batch's images."""
    return model.encode_sam_images(batch), model.mllm.vision_features(batch.clip_images)
