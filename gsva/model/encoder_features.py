"""The frozen encoders' outputs a feature cache holds, and the layout that ties a cache to a model.

A record is the SAM image embedding (C, S/16, S/16) and the CLIP patch features (P, D_v) of the
tower's ``select_layer`` before the (trainable or not) mm projector, in the model's dtype: exactly
what ``GsvaModel`` would compute, so training from the cache gives the same losses. The layout's
fingerprint hashes both encoders' weights and the preprocessing (input sizes, selected layer).
"""

from __future__ import annotations

import torch

from gsva.batch import GsvaBatch
from gsva.feature_cache import FeatureLayout, module_fingerprint
from gsva.model.gsva import GsvaModel


def encoder_layout(model: GsvaModel) -> FeatureLayout:
    """The ``FeatureLayout`` of ``model``'s frozen encoders (hashes their weights: seconds at ViT-H size)."""
    tower = model.mllm.vision_tower.config
    patches = (tower.image_size // tower.patch_size) ** 2
    prompt_encoder = model.visual_model.prompt_encoder
    dtype = model.visual_model.image_encoder.patch_embed.proj.weight.dtype
    settings = {
        "sam_image_size": model.sam_image_size,
        "clip_image_size": tower.image_size,
        "clip_select_layer": model.mllm.select_layer,
        "dtype": str(dtype).removeprefix("torch."),
    }
    fingerprint = module_fingerprint(
        {"sam_image_encoder": model.visual_model.image_encoder, "clip_vision_tower": model.mllm.vision_tower}, settings
    )
    return FeatureLayout(
        fingerprint=fingerprint,
        sam_shape=(prompt_encoder.embed_dim, *prompt_encoder.image_embedding_size),
        clip_shape=(patches, tower.hidden_size),
        dtype=settings["dtype"],
    )


@torch.no_grad()
def encode_features(model: GsvaModel, batch: GsvaBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, C, S/16, S/16) SAM embeddings and (B, P, D_v) CLIP patch features of the batch's images."""
    return model.encode_sam_images(batch), model.mllm.vision_features(batch.clip_images)
