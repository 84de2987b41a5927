"""LLaVA in the transformers-native llava-hf layout loads as our LlavaModel with identical outputs."""

import torch
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

from gsva.model.backbones import load_backbone
from gsva.model.pixels import normalize_clip_images


def test_llava_hf_checkpoint_gives_the_same_features_and_logits(tmp_path):
    torch.manual_seed(0)
    config = LlavaConfig(
        text_config=LlamaConfig(vocab_size=120, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                num_attention_heads=4, num_key_value_heads=4),
        vision_config=CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=3,
                                       num_attention_heads=2, image_size=28, patch_size=14),
        image_token_index=119, vision_feature_layer=-2, vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
    )
    reference = LlavaForConditionalGeneration(config).eval()
    reference.save_pretrained(str(tmp_path))
    ours = load_backbone("llava_hf", tmp_path, None, torch.float32, image_size=28).eval()
    assert ours.projector_type == "mlp2x_gelu" and ours.select_layer == -2
    assert not any(p.is_meta for p in ours.parameters())

    images = torch.randint(0, 256, (2, 3, 28, 28), dtype=torch.uint8)
    with torch.no_grad():
        features = reference.model.get_image_features(
            pixel_values=normalize_clip_images(images), vision_feature_layer=-2, vision_feature_select_strategy="default"
        )
        expected = torch.stack(features.pooler_output)  # per image: (patches, hidden) after the projector
        assert torch.allclose(ours.encode_images(images), expected, atol=1e-6)
        tokens = torch.randint(0, 119, (2, 7))
        assert torch.allclose(ours.language_model(input_ids=tokens).logits, reference(input_ids=tokens).logits, atol=1e-6)
