"""LLaVA-NeXT behind GSVA's multimodal-LLM interface, against transformers' own
``LlavaNextForConditionalGeneration`` and ``LlavaNextProcessor`` on a tiny random model (CPU):
anyres tiles, unpadding and ``image_newline`` for a fixed square image size."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, inject_adapter_in_model
from transformers import (
    InternVLConfig,
    LlavaConfig,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextImageProcessor,
    LlavaNextProcessor,
    LlavaOnevisionConfig,
    Qwen2_5_VLConfig,
)

from gsva.model.backbones import checkpoint_kind, resolve_backbone
from gsva.model.backbones.hf_parts import ties_word_embeddings
from gsva.model.backbones.llava_next import (
    IMAGE_MARKER,
    AnyresLayout,
    LlavaNextBackbone,
    default_image_processor,
    load_llava_next,
)
from gsva.text.conversation import ChatTemplate
from gsva.text.conversation_tokens import tokenize_conversation
from gsva.text.special_tokens import IGNORE_INDEX, IMAGE_PLACEHOLDER, IMAGE_TOKEN_INDEX
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

TILE = 16
PATCH = 4
PINPOINTS = [[16, 32], [32, 16], [32, 32]]
SIDE = 16
"""GSVA's image side for most tests: the 16 x 32 pinpoint, two tiles side by side, the image padded
into them and unpadded back to 4 x 4 features: P = 16 (base) + 4 * (4 + 1) = 36."""
LLAVA_V1_6_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'user' %}[INST] {{ message['content'] }} [/INST]"
    "{% else %} {{ message['content'] }}{{ eos_token }}{% endif %}{% endfor %}"
)
"""llava-v1.6-mistral's conversation form: the template writes BOS itself."""
TURNS, SHORT_TURNS = conversations(IMAGE_MARKER)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    directory = tmp_path_factory.mktemp("llava_next_tokenizer")
    return chat_tokenizer(directory, (IMAGE_PLACEHOLDER,), CHAT_TEMPLATE)


def tiny_config(tokenizer, tie: bool = False, pinpoints: list[list[int]] = PINPOINTS) -> LlavaNextConfig:
    """Text: Llama, hidden 64, 2 layers; vision: CLIP, hidden 32, 2 layers, 16 px tiles of 4 px
    patches, features of layer -2."""
    return LlavaNextConfig(
        vision_config=dict(
            model_type="clip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, image_size=TILE, patch_size=PATCH,
        ),
        text_config=dict(
            model_type="llama", vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=tie,
        ),
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_PLACEHOLDER),
        image_grid_pinpoints=pinpoints,
        vision_feature_layer=-2,
        tie_word_embeddings=tie,
    )


def build_hf(config: LlavaNextConfig, seed: int = 0) -> LlavaNextForConditionalGeneration:
    torch.manual_seed(seed)
    hf = LlavaNextForConditionalGeneration(config)
    unit_scale_(hf)
    return hf.eval()


def processor_of(image_processor: LlavaNextImageProcessor, tokenizer, patch_size: int) -> LlavaNextProcessor:
    """transformers' LLaVA-NeXT processor as the llava-hf checkpoints configure it (CLIP's CLS
    counted, then dropped by the 'default' strategy)."""
    return LlavaNextProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=patch_size,
        vision_feature_select_strategy="default", num_additional_image_tokens=1,
    )


def expanded_image_tokens(processor: LlavaNextProcessor, side: int) -> int:
    """How many ``<image>`` tokens the processor writes for one side x side image."""
    inputs = processor(images=[torch.zeros((3, side, side), dtype=torch.uint8)], text=[IMAGE_PLACEHOLDER], return_tensors="pt")
    return int((inputs["input_ids"] == processor.image_token_id).sum())


@pytest.mark.parametrize(
    "side, pinpoints",
    [(16, PINPOINTS), (16, [[32, 16], [16, 32]]), (24, PINPOINTS), (40, [[16, 48], [32, 32]])],
    ids=["1x2-unpadded", "2x1-unpadded", "2x2-upscaled", "2x2-downscaled"],
)
def test_projected_vision_features_are_get_image_features(tokenizer, side, pinpoints):
    hf = build_hf(tiny_config(tokenizer, pinpoints=pinpoints))
    backbone = LlavaNextBackbone.from_hf(hf, side)
    images = random_images(2, side)
    inputs = backbone.image_processor(list(images), return_tensors="pt")
    with torch.no_grad():
        expected = hf.get_image_features(inputs["pixel_values"], inputs["image_sizes"]).pooler_output
        features = backbone.vision_features(images)
        projected = backbone.mm_projector(features)
    torch.testing.assert_close(backbone.pixel_values(images), inputs["pixel_values"], rtol=0, atol=0)
    assert features.shape == (2, backbone.layout.patch_count * (TILE // PATCH) ** 2, 32)
    assert projected.shape == (2, backbone.image_token_count, backbone.hidden_size)
    assert backbone.image_token_count == expanded_image_tokens(processor_of(backbone.image_processor, tokenizer, PATCH), side)
    torch.testing.assert_close(projected, torch.stack(expected), rtol=0, atol=1e-6)


@pytest.mark.parametrize("side, tokens", [(336, 1176), (672, 2928)])
def test_token_count_of_the_llava_v1_6_layout_is_the_processor_expansion(tokenizer, side, tokens):
    config = LlavaNextConfig()  # llava-v1.6: 336 px tiles of 14 px patches, its five pinpoints
    assert config.image_grid_pinpoints == LLAVA_V1_6_PINPOINTS
    layout = AnyresLayout.of(side, config.vision_config.image_size, config.vision_config.patch_size, config.image_grid_pinpoints)
    assert layout.packing_index().numel() == tokens
    assert expanded_image_tokens(processor_of(default_image_processor(config), tokenizer, 14), side) == tokens


def test_logits_and_states_equal_the_plain_forward_on_processor_inputs(tokenizer):
    hf = build_hf(tiny_config(tokenizer))
    backbone = LlavaNextBackbone.from_hf(hf, SIDE)
    images = random_images(2, SIDE)
    conv_to_image = torch.tensor([1, 0])
    conversations = [TURNS, SHORT_TURNS]
    input_ids, mask, _ = tokenized_rows(tokenizer, conversations)
    texts = [ChatTemplate(tokenizer).render(turns).text for turns in conversations]
    inputs = processor_of(backbone.image_processor, tokenizer, PATCH)(
        images=list(images[conv_to_image]), text=texts, return_tensors="pt", padding=True
    )
    with torch.no_grad():
        spliced, hidden, logits = backbone_logits(
            backbone, input_ids, mask, backbone.mm_projector(backbone.vision_features(images)), conv_to_image
        )
        reference = hf(**inputs, output_hidden_states=True)
    valid = spliced.attention_mask
    assert torch.equal(valid, inputs["attention_mask"].bool())
    ours = spliced.token_ids.masked_fill(spliced.token_ids == IMAGE_TOKEN_INDEX, hf.config.image_token_id)
    assert torch.equal(ours[valid], inputs["input_ids"][valid])
    torch.testing.assert_close(logits[valid], reference.logits[valid], rtol=0, atol=1e-5)
    torch.testing.assert_close(hidden[valid], reference.hidden_states[-1][valid], rtol=0, atol=1e-5)


def test_cached_features_give_the_logits_and_loss_of_pixels(tokenizer, tmp_path):
    backbone = LlavaNextBackbone.from_hf(build_hf(tiny_config(tokenizer)), SIDE)
    check_cached_features_give_the_loss_of_pixels(
        backbone, tokenizer, [TURNS, SHORT_TURNS], random_images(2, SIDE), tmp_path / "cache"
    )


def test_generate_states_equal_teacher_forced_states(tokenizer):
    backbone = LlavaNextBackbone.from_hf(build_hf(tiny_config(tokenizer)), SIDE)
    prompts = [[(TURNS[0][0], None)], [(SHORT_TURNS[0][0], None)]]
    check_generated_states_are_teacher_forced(backbone, tokenizer, prompts, random_images(2, SIDE))


@pytest.mark.parametrize("tie", [True, False])
def test_save_load_round_trip(tokenizer, tmp_path, tie):
    processor = LlavaNextImageProcessor(
        image_grid_pinpoints=PINPOINTS, size={"shortest_edge": TILE}, crop_size={"height": TILE, "width": TILE},
        image_mean=[0.5, 0.4, 0.3], image_std=[0.2, 0.25, 0.3],
    )
    backbone = LlavaNextBackbone.from_hf(build_hf(tiny_config(tokenizer, tie=tie)), SIDE, processor)
    backbone.language_model.resize_token_embeddings(len(tokenizer) + 2, mean_resizing=False)
    backbone.save_pretrained(tmp_path / "next")
    loaded = load_llava_next(tmp_path / "next", torch.float32, SIDE).eval()
    assert loaded.image_processor.to_dict() == processor.to_dict()
    assert ties_word_embeddings(loaded.language_model) == tie
    check_reloaded_logits(backbone, loaded, tokenizer, [TURNS, SHORT_TURNS], random_images(2, SIDE))


def test_save_refuses_unmerged_lora(tokenizer, tmp_path):
    backbone = LlavaNextBackbone.from_hf(build_hf(tiny_config(tokenizer)), SIDE)
    inject_adapter_in_model(LoraConfig(r=2, target_modules=["q_proj"]), backbone.language_model)
    with pytest.raises(ValueError, match="merge"):
        backbone.save_pretrained(tmp_path / "next")


@pytest.mark.parametrize("holder", ["language_model", "backbone", "gsva"])
def test_lora_lands_only_in_the_language_model(tokenizer, holder):
    backbone = LlavaNextBackbone.from_hf(build_hf(tiny_config(tokenizer)), SIDE)
    root, prefix = lora_holders(backbone)[holder]
    inject_adapter_in_model(LoraConfig(r=2, target_modules=backbone.lora_target_modules(["q_proj", "v_proj"])), root)
    names = lora_module_names(root)
    assert len(names) == 2 * backbone.language_model.config.num_hidden_layers
    assert all(name.startswith(prefix + "model.layers.") for name in names)


def test_bare_lora_names_also_reach_the_vision_tower(tokenizer):
    backbone = LlavaNextBackbone.from_hf(build_hf(tiny_config(tokenizer)), SIDE)
    inject_adapter_in_model(LoraConfig(r=2, target_modules=["q_proj", "v_proj"]), backbone)
    assert any(name.startswith("vision_tower.") for name in lora_module_names(backbone))


def test_images_of_another_size_are_refused(tokenizer):
    backbone = LlavaNextBackbone.from_hf(build_hf(tiny_config(tokenizer)), SIDE)
    with pytest.raises(ValueError, match="16²"):
        backbone.vision_features(random_images(1, 24))
    with pytest.raises(ValueError, match="16²"):
        backbone.vision_feature_shape(24)


@pytest.mark.parametrize(
    "setting, field",
    [({"vision_feature_layer": [-2, -1]}, "vision_feature_layer"),
     ({"vision_feature_select_strategy": "full"}, "vision_feature_select_strategy"),
     ({"projector_hidden_act": "relu"}, "projector_hidden_act"),
     ({"vision_config": {"model_type": "siglip_vision_model"}}, "vision_config.model_type")],
)
def test_unsupported_settings_are_refused_naming_the_directory_and_field(tokenizer, tmp_path, setting, field):
    config = tiny_config(tokenizer).to_dict() | setting
    LlavaNextConfig(**config).save_pretrained(str(tmp_path))
    with pytest.raises(ValueError, match=f"{tmp_path}: {field}="):
        load_llava_next(tmp_path, torch.float32, SIDE)


def test_an_in_memory_model_with_an_unsupported_setting_is_refused(tokenizer):
    hf = build_hf(tiny_config(tokenizer))
    hf.config.vision_feature_select_strategy = "full"
    with pytest.raises(ValueError, match="LlavaNextForConditionalGeneration: vision_feature_select_strategy="):
        LlavaNextBackbone.from_hf(hf, SIDE)


@pytest.mark.parametrize(
    "processor_config, field",
    [({"image_grid_pinpoints": [[32, 32]]}, "image_grid_pinpoints"), ({"image_processor_type": "CLIPImageProcessor"}, "image_processor_type")],
)
def test_a_preprocessor_config_that_disagrees_is_refused_naming_the_file(tokenizer, tmp_path, processor_config, field):
    tiny_config(tokenizer).save_pretrained(str(tmp_path))
    settings = default_image_processor(tiny_config(tokenizer)).to_dict() | processor_config
    LlavaNextImageProcessor(**{k: v for k, v in settings.items() if k != "image_processor_type"}).save_pretrained(str(tmp_path))
    if field == "image_processor_type":
        file = tmp_path / "preprocessor_config.json"
        file.write_text(file.read_text().replace('"LlavaNextImageProcessor"', '"CLIPImageProcessor"'))
    with pytest.raises(ValueError, match=f"preprocessor_config.json: {field}="):
        load_llava_next(tmp_path, torch.float32, SIDE)


@pytest.mark.parametrize(
    "config, model_type",
    [(LlavaConfig(), "llava"), (Qwen2_5_VLConfig(), "qwen2_5_vl"), (InternVLConfig(), "internvl"),
     (LlavaOnevisionConfig(), "llava_onevision")],
)
def test_a_checkpoint_of_another_kind_is_refused(tmp_path, config, model_type):
    directory = tmp_path / "checkpoint"
    config.save_pretrained(str(directory))
    with pytest.raises(ValueError) as raised:
        load_llava_next(directory, torch.float32, SIDE)
    message = str(raised.value)
    assert str(directory) in message and repr(model_type) in message and "'llava_next'" in message
    if model_type == "llava_onevision":
        with pytest.raises(ValueError, match=f"{directory}.*'llava_onevision'"):
            checkpoint_kind(directory)
    else:
        with pytest.raises(ValueError, match=f"model.backbone='llava_next' but {directory}"):
            resolve_backbone("llava_next", directory)


def test_a_directory_without_config_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_llava_next(tmp_path, torch.float32, SIDE)


def test_chat_template_labels_only_the_answers(tokenizer):
    template = ChatTemplate(tokenizer)
    conversation = template.render(TURNS)
    assert conversation.text.startswith(f"{tokenizer.bos_token}[INST] {IMAGE_PLACEHOLDER}\n")
    row = tokenize_conversation(conversation, tokenizer)
    assert row.input_ids[0] == tokenizer.bos_token_id and row.input_ids.count(tokenizer.bos_token_id) == 1
    assert row.input_ids.count(IMAGE_TOKEN_INDEX) == 1
    supervised = [token for token in row.labels if token != IGNORE_INDEX]
    assert tokenizer.decode(supervised) == " It is [SEG].</s> [REJ].</s>"
    prompt = template.render([(TURNS[0][0], None)])
    assert prompt.answer_spans == [] and prompt.text.endswith("[/INST]")
    assert conversation.text[: conversation.answer_spans[0][0]] == prompt.text
