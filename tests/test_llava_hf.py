"""LLaVA in the transformers-native llava-hf layout loads as our LlavaModel with identical outputs,
is saved in that layout again (new token rows, merged LoRA) and exports a merged GSVA model in it."""

import json
from pathlib import Path

import pytest
import torch
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

from gsva.data.refer_seg.dataset import ReferSegDataset
from gsva.data.refer_seg.reader import ReferIndex
from gsva.data.samples import Collator
from gsva.engine.export import write_merged
from gsva.model.backbones import load_backbone
from gsva.config import load_config
from gsva.model.build import resize_token_rows
from gsva.model.directory import load_trainable_weights, save_pretrained
from gsva.model.backbones.llava_hf import LlavaHfModel, load_llava_hf
from gsva.model.pixels import normalize_clip_images
from gsva.model.trainable import add_lora
from gsva.pipeline import build_pipeline
from tests.conftest import TINY_CONFIG, tiny_config


def tiny_llava_config(vocab_size: int = 120, image_size: int = 28, patch_size: int = 14) -> LlavaConfig:
    """A tiny LLaVA-1.5 shaped config (Llama decoder, CLIP tower, 2-layer GELU projector); its image
    token is the last entry of the vocabulary."""
    return LlavaConfig(
        text_config=LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                num_attention_heads=4, num_key_value_heads=4),
        vision_config=CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=3,
                                       num_attention_heads=2, image_size=image_size, patch_size=patch_size),
        image_token_index=vocab_size - 1, image_seq_length=(image_size // patch_size) ** 2, vision_feature_layer=-2,
        vision_feature_select_strategy="default", projector_hidden_act="gelu",
    )


def saved_reference(directory: Path, config: LlavaConfig) -> LlavaForConditionalGeneration:
    torch.manual_seed(0)
    reference = LlavaForConditionalGeneration(config).eval()
    reference.save_pretrained(str(directory))
    return reference


def test_llava_hf_checkpoint_gives_the_same_features_and_logits(tmp_path):
    reference = saved_reference(tmp_path, tiny_llava_config())
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


def test_saved_in_the_llava_hf_layout_with_the_new_token_rows(tmp_path):
    config = tiny_llava_config()
    saved_reference(tmp_path / "source", config)
    ours = load_llava_hf(tmp_path / "source", torch.float32).eval()
    resize_token_rows(ours.language_model, 123, "normal")  # e.g. [SEG], [REJ] and a pad token
    ours.save_pretrained(tmp_path / "saved")

    written = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert written["model_type"] == "llava" and written["text_config"]["vocab_size"] == 123
    assert (written["image_token_index"], written["image_seq_length"]) == (config.image_token_index, config.image_seq_length)
    hf = LlavaForConditionalGeneration.from_pretrained(str(tmp_path / "saved")).eval()
    again = load_llava_hf(tmp_path / "saved", torch.float32).eval()
    images = torch.randint(0, 256, (2, 3, 28, 28), dtype=torch.uint8)
    tokens = torch.randint(0, 123, (2, 9))
    tokens[:, -3:] = torch.tensor([120, 121, 122])  # the new rows
    with torch.no_grad():
        logits = ours.language_model(input_ids=tokens).logits
        assert torch.allclose(hf(input_ids=tokens).logits, logits, atol=1e-5)
        assert torch.equal(again.language_model(input_ids=tokens).logits, logits)
        features = hf.model.get_image_features(
            pixel_values=normalize_clip_images(images), vision_feature_layer=-2, vision_feature_select_strategy="default"
        )
        assert torch.allclose(torch.stack(features.pooler_output), ours.encode_images(images), atol=1e-6)
        assert torch.equal(again.encode_images(images), ours.encode_images(images))


def test_unmerged_lora_is_refused(tmp_path):
    saved_reference(tmp_path / "source", tiny_llava_config())
    ours = load_llava_hf(tmp_path / "source", torch.float32)
    add_lora(ours.language_model, load_config(TINY_CONFIG, ["model.finetune=lora", "model.lora_r=4"]).model)
    with pytest.raises(ValueError, match="LoRA.*merge them before saving"):
        ours.save_pretrained(tmp_path / "saved")
    assert not (tmp_path / "saved").exists()


def test_the_merged_export_of_gsva_on_a_llava_hf_checkpoint_round_trips(synthetic_root, tokenizer_dir, tmp_path):
    saved_reference(tmp_path / "source", tiny_llava_config(vocab_size=512, image_size=32, patch_size=8))
    cfg = tiny_config(synthetic_root, tokenizer_dir, f"model.llava_path={tmp_path / 'source'}", "model.finetune=lora",
                      "model.lora_r=4")
    pipeline = build_pipeline(cfg)
    model = pipeline.model.eval()
    assert type(model.mllm) is LlavaHfModel
    with torch.no_grad():  # LoRA's B starts at zero: give the adapters something to merge
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0.0, 0.05)
    dataset = ReferSegDataset(ReferIndex(synthetic_root), "val", pipeline.builder, False)
    batch = Collator(pipeline.tokenizer.pad_token_id, cfg.data.sam_image_size)([dataset[0], dataset[1]])
    taught = model.predict(batch, "teacher-forced")

    merged_cfg, merged = write_merged(model, cfg, tmp_path / "merged")
    save_pretrained(model, merged_cfg, tmp_path / "merged")
    assert merged == 4  # q_proj and v_proj of the 2 decoder layers
    written = json.loads((tmp_path / "merged" / "llava" / "config.json").read_text())
    assert written["model_type"] == "llava" and "mm_vision_tower" not in written
    assert not (tmp_path / "merged" / "clip").exists()
    reloaded = build_pipeline(merged_cfg)
    assert type(reloaded.model.mllm) is LlavaHfModel
    load_trainable_weights(reloaded.model, tmp_path / "merged")
    again = reloaded.model.eval().predict(batch, "teacher-forced")
    for before, after in zip(taught, again):
        assert before.rejected == after.rejected
        assert torch.equal(before.masks, after.masks)
