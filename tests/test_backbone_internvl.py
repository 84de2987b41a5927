"""InternVL behind GSVA's multimodal-LLM interface, against transformers' own
``InternVLForConditionalGeneration`` on a tiny random model (CPU)."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, inject_adapter_in_model
from transformers import InternVLConfig, InternVLForConditionalGeneration, LlavaConfig, Qwen2Config

from gsva.model.backbones.internvl import (
    IMAGE_CONTEXT_TOKEN,
    IMAGE_END_TOKEN,
    IMAGE_MARKER,
    IMAGE_START_TOKEN,
    InternVLBackbone,
    load_internvl,
)
from gsva.model.backbones.hf_parts import ties_word_embeddings
from gsva.text.conversation import ChatTemplate
from gsva.text.special_tokens import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from gsva.text.conversation_tokens import tokenize_conversation
from tests.backbone_helpers import (
    chat_tokenizer,
    conversations,
    backbone_logits,
    check_cached_features_give_the_loss_of_pixels,
    check_generated_states_are_teacher_forced,
    check_reloaded_logits,
    lora_holders,
    lora_module_names,
    random_images,
    tokenized_rows,
    unit_scale_,
)

TILE = 28
PATCH = 7
CHAT_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}<|im_start|>system\nYou see images.<|im_end|>\n{% endif %}"
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
TURNS, SHORT_TURNS = conversations(IMAGE_MARKER)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    directory = tmp_path_factory.mktemp("internvl_tokenizer")
    special = (IMAGE_START_TOKEN, IMAGE_END_TOKEN, IMAGE_CONTEXT_TOKEN, "<|im_start|>", "<|im_end|>")
    return chat_tokenizer(directory, special, CHAT_TEMPLATE)


def tiny_config(tokenizer, vision_feature_layer: int = -1, tie: bool = True) -> InternVLConfig:
    """Text: Qwen2, hidden 64, 2 layers; vision: hidden 32, 2 layers, 28 px tiles of 7 px patches
    (16 patches, 4 image positions after pixel shuffle)."""
    return InternVLConfig(
        vision_config=dict(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            image_size=TILE, patch_size=PATCH, use_mean_pooling=False,
        ),
        text_config=dict(
            model_type="qwen2", vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
            tie_word_embeddings=tie,
        ),
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_CONTEXT_TOKEN),
        image_seq_length=(TILE // PATCH) ** 2 // 4,
        vision_feature_layer=vision_feature_layer,
        tie_word_embeddings=tie,
    )


def build_hf(config: InternVLConfig, seed: int = 0) -> InternVLForConditionalGeneration:
    torch.manual_seed(seed)
    hf = InternVLForConditionalGeneration(config)
    unit_scale_(hf)
    return hf.eval()


def expanded_ids(input_ids: torch.Tensor, image_token_id: int, patches: int) -> torch.Tensor:
    """(N, L) ids with one placeholder per row -> (N, L - 1 + P): the placeholder as P image-context ids."""
    rows = []
    for row in input_ids.tolist():
        at = row.index(IMAGE_TOKEN_INDEX)
        rows.append(row[:at] + [image_token_id] * patches + row[at + 1 :])
    return torch.tensor(rows)


def test_pixel_values_equal_the_image_processor_output(tokenizer):
    backbone = InternVLBackbone.from_hf(build_hf(tiny_config(tokenizer)))
    images = random_images(3, TILE)
    expected = backbone.image_processor()(list(images), return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(backbone.pixel_values(images), expected, rtol=0, atol=1e-6)


def test_pixel_values_refuse_another_image_size(tokenizer):
    backbone = InternVLBackbone.from_hf(build_hf(tiny_config(tokenizer)))
    with pytest.raises(ValueError, match="28"):
        backbone.pixel_values(torch.zeros((1, 3, 56, 56), dtype=torch.uint8))


@pytest.mark.parametrize("vision_feature_layer", [-1, -2])
def test_projected_vision_features_are_get_image_features(tokenizer, vision_feature_layer):
    hf = build_hf(tiny_config(tokenizer, vision_feature_layer))
    backbone = InternVLBackbone.from_hf(hf)
    images = random_images(2, TILE)
    with torch.no_grad():
        pixel_values = backbone.image_processor()(list(images), return_tensors="pt")["pixel_values"]
        expected = hf.get_image_features(pixel_values).pooler_output
        features = backbone.vision_features(images)
        projected = backbone.mm_projector(features)
    assert features.shape == (2, (TILE // PATCH) ** 2, 32)
    assert projected.shape == (2, backbone.image_token_count, backbone.hidden_size)
    torch.testing.assert_close(projected, expected, rtol=0, atol=0)


@pytest.mark.parametrize("setting", [{"vision_feature_select_strategy": "full"}, {"vision_feature_layer": [-1, -2]}])
def test_unsupported_vision_feature_settings_are_refused(tokenizer, setting):
    hf = build_hf(tiny_config(tokenizer))
    for name, value in setting.items():
        setattr(hf.config, name, value)
    with pytest.raises(ValueError, match=next(iter(setting))):
        InternVLBackbone.from_hf(hf)


def test_logits_and_states_equal_the_plain_forward(tokenizer):
    config = tiny_config(tokenizer)
    hf = build_hf(config)
    backbone = InternVLBackbone.from_hf(hf)
    images = random_images(2, TILE)
    conv_to_image = torch.tensor([1, 0])
    input_ids, mask, _ = tokenized_rows(tokenizer, [TURNS, SHORT_TURNS])
    assert mask.sum(1).tolist()[0] != mask.sum(1).tolist()[1]
    with torch.no_grad():
        spliced, hidden, logits = backbone_logits(
            backbone, input_ids, mask, backbone.mm_projector(backbone.vision_features(images)), conv_to_image
        )
        pixel_values = backbone.image_processor()(list(images[conv_to_image]), return_tensors="pt")["pixel_values"]
        reference = hf(
            input_ids=expanded_ids(input_ids, config.image_token_id, backbone.image_token_count),
            pixel_values=pixel_values,
            attention_mask=spliced.attention_mask.long(),
            output_hidden_states=True,
        )
    valid = spliced.attention_mask
    torch.testing.assert_close(logits[valid], reference.logits[valid], rtol=0, atol=1e-5)
    torch.testing.assert_close(hidden[valid], reference.hidden_states[-1][valid], rtol=0, atol=1e-5)


def test_cached_features_give_the_logits_and_loss_of_pixels(tokenizer, tmp_path):
    backbone = InternVLBackbone.from_hf(build_hf(tiny_config(tokenizer)))
    check_cached_features_give_the_loss_of_pixels(backbone, tokenizer, [TURNS, SHORT_TURNS], random_images(2, TILE), tmp_path / "cache")


def test_generate_states_equal_teacher_forced_states(tokenizer):
    backbone = InternVLBackbone.from_hf(build_hf(tiny_config(tokenizer)))
    prompts = [[(TURNS[0][0], None)], [(SHORT_TURNS[0][0], None)]]
    check_generated_states_are_teacher_forced(backbone, tokenizer, prompts, random_images(2, TILE))


@pytest.mark.parametrize("tie", [True, False])
def test_added_tokens_keep_lm_head_consistent(tokenizer, tie):
    backbone = InternVLBackbone.from_hf(build_hf(tiny_config(tokenizer, tie=tie)))
    language_model = backbone.language_model
    assert ties_word_embeddings(language_model) == tie
    old_head = language_model.get_output_embeddings().weight.detach().clone()
    size = len(tokenizer) + 2
    language_model.resize_token_embeddings(size, mean_resizing=False)
    embeddings, head = language_model.get_input_embeddings().weight, language_model.get_output_embeddings().weight
    assert embeddings.shape[0] == head.shape[0] == language_model.config.vocab_size == size
    assert ties_word_embeddings(language_model) == tie
    hidden = torch.randn(3, backbone.hidden_size)
    logits = backbone.lm_logits(hidden)
    assert logits.shape == (3, size)
    if tie:
        torch.testing.assert_close(logits, hidden @ embeddings.T)
    else:
        torch.testing.assert_close(head[: len(tokenizer)], old_head, rtol=0, atol=0)


@pytest.mark.parametrize("tie", [True, False])
def test_save_load_round_trip(tokenizer, tmp_path, tie):
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    backbone = InternVLBackbone.from_hf(build_hf(tiny_config(tokenizer, tie=tie)), mean, std)
    backbone.language_model.resize_token_embeddings(len(tokenizer) + 2, mean_resizing=False)
    backbone.save_pretrained(tmp_path / "internvl")
    loaded = load_internvl(tmp_path / "internvl", torch.float32).eval()
    assert (loaded.image_mean, loaded.image_std) == (mean, std)
    assert ties_word_embeddings(loaded.language_model) == tie
    check_reloaded_logits(backbone, loaded, tokenizer, [TURNS, SHORT_TURNS], random_images(2, TILE))


def test_save_refuses_unmerged_lora(tokenizer, tmp_path):
    backbone = InternVLBackbone.from_hf(build_hf(tiny_config(tokenizer)))
    inject_adapter_in_model(LoraConfig(r=2, target_modules=["q_proj"]), backbone.language_model)
    with pytest.raises(ValueError, match="merge"):
        backbone.save_pretrained(tmp_path / "internvl")


@pytest.mark.parametrize("holder", ["language_model", "backbone", "gsva"])
def test_lora_lands_only_in_the_language_model(tokenizer, holder):
    backbone = InternVLBackbone.from_hf(build_hf(tiny_config(tokenizer)))
    root, prefix = lora_holders(backbone)[holder]
    target = backbone.lora_target_modules(["q_proj", "v_proj"])
    inject_adapter_in_model(LoraConfig(r=2, target_modules=target), root)
    names = lora_module_names(root)
    assert len(names) == 2 * backbone.language_model.config.num_hidden_layers
    assert all(name.startswith(prefix + "model.layers.") for name in names)


def test_bare_lora_names_also_reach_the_vision_tower(tokenizer):
    backbone = InternVLBackbone.from_hf(build_hf(tiny_config(tokenizer)))
    inject_adapter_in_model(LoraConfig(r=2, target_modules=["q_proj", "v_proj"]), backbone)
    assert any(name.startswith("vision_tower.") for name in lora_module_names(backbone))


@pytest.mark.parametrize(
    "config, model_type",
    [(Qwen2Config(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32), "qwen2"),
     (LlavaConfig(), "llava")],
)
def test_a_checkpoint_of_another_kind_is_refused(tmp_path, config, model_type):
    directory = tmp_path / "checkpoint"
    config.save_pretrained(str(directory))
    with pytest.raises(ValueError) as raised:
        load_internvl(directory, torch.float32)
    message = str(raised.value)
    assert str(directory) in message and repr(model_type) in message and "'internvl'" in message


def test_a_directory_without_config_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_internvl(tmp_path, torch.float32)


def test_chat_template_labels_only_the_answers(tokenizer):
    template = ChatTemplate(tokenizer)
    conversation = template.render(TURNS)
    row = tokenize_conversation(conversation, tokenizer)
    assert row.input_ids.count(IMAGE_TOKEN_INDEX) == 1
    at = row.input_ids.index(IMAGE_TOKEN_INDEX)
    assert row.input_ids[at - 1] == tokenizer.convert_tokens_to_ids(IMAGE_START_TOKEN)
    assert row.input_ids[at + 1] == tokenizer.convert_tokens_to_ids(IMAGE_END_TOKEN)
    supervised = [token for token in row.labels if token != IGNORE_INDEX]
    assert tokenizer.decode(supervised) == "It is [SEG].<|im_end|>\n[REJ].<|im_end|>\n"
    prompt = template.render([(TURNS[0][0], None)])
    assert prompt.answer_spans == []
    assert conversation.text[: conversation.answer_spans[0][0]] == prompt.text
    assert prompt.text.endswith("<|im_start|>assistant\n")
