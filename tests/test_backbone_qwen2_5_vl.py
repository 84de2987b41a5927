"""Qwen2.5-VL as GSVA's MLLM: the adapter gives the model's own outputs through GSVA's interface
(splice, decoder states, logits, greedy generation), from pixels or cached features, and survives
resizing, LoRA, saving and loading. A tiny random model and a locally trained tokenizer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from peft import LoraConfig, inject_adapter_in_model
from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2Config,
)
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from gsva.model.backbones.qwen2_5_vl import (
    IMAGE_MARKER,
    IMAGE_PAD_TOKEN,
    GreedyGeneration,
    Qwen25VLBackbone,
    load_qwen2_5_vl,
    mrope_position_ids,
    patchify_images,
)
from gsva.model.build import resize_token_rows
from gsva.model.pixels import CLIP_MEAN, CLIP_STD, normalize_clip_images
from gsva.text.conversation import ChatTemplate
from gsva.text.special_tokens import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from gsva.text.conversation_tokens import tokenize_conversation
from gsva.text.tokenizer import add_task_tokens, load_tokenizer, train_tiny_bpe

IMAGE_SIZE = 112
"""Image side: 8x8 patches of 14 px, P = 16 tokens after the 2x2 merger, four 56 px attention
windows in the windowed vision block."""
PATCHES = (IMAGE_SIZE // 28) ** 2
TEXT_INITIALIZER_RANGE = 0.3
"""Wider than Qwen's 0.02, so that the greedy tokens of a random tiny decoder vary from step to step."""
QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", IMAGE_PAD_TOKEN, "<|video_pad|>",
)
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
"""Qwen2-VL's chat template, reduced to images and text."""
CONVERSATIONS = [
    [(f"{IMAGE_MARKER}\nPlease segment the red square in this image.", "Sure, [SEG].")],
    [(f"{IMAGE_MARKER}\nWhat is the blue circle?", "It is a circle."), ("Please segment the blue circle.", "[SEG] and [REJ].")],
]
"""Two conversations of different lengths (the second is right-padded in a batch), the image in
the first question."""


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    """A Qwen-style tokenizer read from a checkpoint directory (byte-level BPE, Qwen's special
    tokens, no BOS, eos ``<|im_end|>``, a Qwen chat template), with GSVA's [SEG] and [REJ] added."""
    directory = tmp_path_factory.mktemp("qwen_tokenizer")
    corpus = [question + " " + answer for conversation in CONVERSATIONS for question, answer in conversation] * 20
    trained = train_tiny_bpe(corpus, 300, directory, extra_tokens=QWEN_SPECIAL_TOKENS)
    trained.eos_token, trained.pad_token, trained.chat_template = "<|im_end|>", "<|endoftext|>", CHAT_TEMPLATE
    trained.bos_token = None
    trained.save_pretrained(str(directory))
    loaded = load_tokenizer(directory, 512)
    add_task_tokens(loaded, ["[SEG]", "[REJ]"])
    return loaded


def base_size(tokenizer) -> int:
    """Entries of the checkpoint's tokenizer before [SEG] (the first task token) was added."""
    return tokenizer.convert_tokens_to_ids("[SEG]")


def tiny_config(tokenizer, vocab_size: int, tie_word_embeddings: bool) -> Qwen2_5_VLConfig:
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in QWEN_SPECIAL_TOKENS}
    return Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=512, initializer_range=TEXT_INITIALIZER_RANGE,
            bos_token_id=None, eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
            rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 10000.0},
        ),
        vision_config=dict(
            depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64, window_size=56, fullatt_block_indexes=[1],
        ),
        image_token_id=ids[IMAGE_PAD_TOKEN], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=tie_word_embeddings,
    )


def tiny_qwen(tokenizer, vocab_size: int | None = None, tie_word_embeddings: bool = True) -> Qwen2_5_VLForConditionalGeneration:
    torch.manual_seed(0)
    config = tiny_config(tokenizer, vocab_size or len(tokenizer), tie_word_embeddings)
    return Qwen2_5_VLForConditionalGeneration(config).eval()


def images(count: int = 2) -> torch.Tensor:
    return torch.randint(0, 256, (count, 3, IMAGE_SIZE, IMAGE_SIZE), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)


def padded(rows: list[list[int]], value: int) -> torch.Tensor:
    """Right-pad rows of ids to one (N, L) tensor."""
    length = max(len(row) for row in rows)
    return torch.tensor([row + [value] * (length - len(row)) for row in rows])


def gsva_batch(tokenizer) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """GSVA's form of ``CONVERSATIONS``: (N, L) ids with one ``IMAGE_TOKEN_INDEX``, right-padded;
    (N, L) bool attention mask; (N, L) answer-only labels."""
    template = ChatTemplate(tokenizer)
    tokenized = [tokenize_conversation(template.render(conversation), tokenizer) for conversation in CONVERSATIONS]
    input_ids = padded([t.input_ids for t in tokenized], tokenizer.pad_token_id)
    labels = padded([t.labels for t in tokenized], IGNORE_INDEX)
    mask = padded([[1] * len(t.input_ids) for t in tokenized], 0).bool()
    return input_ids, mask, labels


def qwen_batch(
    input_ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor, image_token_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Qwen's own form of a GSVA batch, right-padded: (N, L') ids with the placeholder repeated as
    P image tokens, attention mask, labels, and mm_token_type_ids (1 on image tokens)."""
    rows, row_masks, row_labels = [], [], []
    for ids, valid, label in zip(input_ids.tolist(), mask.tolist(), labels.tolist()):
        ids, label = [i for i, v in zip(ids, valid) if v], [l for l, v in zip(label, valid) if v]
        at = ids.index(IMAGE_TOKEN_INDEX)
        rows.append(ids[:at] + [image_token_id] * PATCHES + ids[at + 1:])
        row_labels.append(label[:at] + [IGNORE_INDEX] * PATCHES + label[at + 1:])
        row_masks.append([1] * len(rows[-1]))
    qwen_ids = padded(rows, 0)
    return qwen_ids, padded(row_masks, 0), padded(row_labels, IGNORE_INDEX), (qwen_ids == image_token_id).int()


def left_padded(mask: torch.Tensor, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Right-padded (N, L) tensors moved to left padding (each row's valid prefix of ``mask`` to the end)."""
    shift = (~mask.bool()).sum(1, keepdim=True)
    order = (torch.arange(mask.shape[1]) - shift) % mask.shape[1]
    return tuple(tensor.gather(1, order) for tensor in tensors)


def pixel_inputs(clip_images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Qwen's pixel_values and image_grid_thw of ``clip_images``, from its image processor."""
    processor = Qwen2VLImageProcessorPil()
    output = processor(images=list(clip_images.numpy()), return_tensors="pt", input_data_format="channels_first")
    return output["pixel_values"], output["image_grid_thw"]


def test_patches_are_those_of_the_qwen_image_processor():
    clip_images = images()
    processor = Qwen2VLImageProcessorPil()
    assert np.allclose(processor.image_mean, CLIP_MEAN) and np.allclose(processor.image_std, CLIP_STD)
    expected, grid = pixel_inputs(clip_images)  # default settings: resizing a 112 px side is a no-op
    ours = patchify_images(normalize_clip_images(clip_images), 14, 2, 2)
    assert grid.tolist() == [[1, IMAGE_SIZE // 14, IMAGE_SIZE // 14]] * 2
    assert ours.shape == expected.shape
    difference = (ours - expected).abs().max().item()
    assert difference < 1e-6, difference
    print(f"max |ours - Qwen2VLImageProcessorPil| {difference:.2e}")


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_mrope_positions_are_those_of_get_rope_index(tokenizer, padding_side):
    model = tiny_qwen(tokenizer)
    input_ids, mask, labels = gsva_batch(tokenizer)
    qwen_ids, qwen_mask, _, token_types = qwen_batch(input_ids, mask, labels, model.config.image_token_id)
    if padding_side == "left":
        qwen_ids, qwen_mask, token_types = left_padded(qwen_mask, qwen_ids, qwen_mask, token_types)
    grid = torch.tensor([[1, IMAGE_SIZE // 14, IMAGE_SIZE // 14]] * 2)
    expected, _ = model.model.get_rope_index(qwen_ids, token_types, image_grid_thw=grid, attention_mask=qwen_mask)
    token_ids = torch.where(qwen_ids == model.config.image_token_id, IMAGE_TOKEN_INDEX, qwen_ids)
    assert torch.equal(mrope_position_ids(token_ids, qwen_mask), expected)


@pytest.mark.parametrize("pass_mask", [True, False])
def test_spliced_decoder_gives_the_qwen_forward(tokenizer, pass_mask):
    model = tiny_qwen(tokenizer)
    backbone = Qwen25VLBackbone.from_hf(model)
    clip_images = images()
    input_ids, mask, labels = gsva_batch(tokenizer)
    qwen_ids, qwen_mask, _, token_types = qwen_batch(input_ids, mask, labels, model.config.image_token_id)
    pixel_values, grid = pixel_inputs(clip_images)
    with torch.no_grad():
        reference = model(
            input_ids=qwen_ids, attention_mask=qwen_mask, pixel_values=pixel_values, image_grid_thw=grid,
            mm_token_type_ids=token_types, output_hidden_states=True,
        )
        features = backbone.mm_projector(backbone.vision_features(clip_images))
        spliced = backbone.splice(input_ids, mask, features, torch.arange(2))
        hidden = backbone.last_hidden_states(spliced.inputs_embeds, spliced.attention_mask if pass_mask else None, spliced.token_ids)
        logits = backbone.lm_logits(hidden)
    valid = spliced.attention_mask
    assert torch.equal(valid, qwen_mask.bool())
    logit_difference = (logits - reference.logits)[valid].abs().max().item()
    hidden_difference = (hidden - reference.hidden_states[-1])[valid].abs().max().item()
    assert logit_difference < 1e-5 and hidden_difference < 1e-5, (logit_difference, hidden_difference)

    seg = tokenizer.convert_tokens_to_ids("[SEG]")
    rows, cols = (input_ids[:, 1:] == seg).nonzero(as_tuple=True)  # the states that predict each [SEG]
    at = backbone.spliced_positions(input_ids, rows, cols, PATCHES)
    assert torch.equal(qwen_ids[rows, at + 1], torch.full_like(rows, seg))
    state_difference = (hidden[rows, at] - reference.hidden_states[-1][rows, at]).abs().max().item()
    assert state_difference < 1e-5, state_difference
    print(f"max |logits| {logit_difference:.2e}, |hidden| {hidden_difference:.2e}, |[SEG] states| {state_difference:.2e}")


def test_cached_features_give_the_loss_of_pixels(tokenizer):
    model = tiny_qwen(tokenizer)
    backbone = Qwen25VLBackbone.from_hf(model)
    clip_images = images(3)
    input_ids, mask, labels = gsva_batch(tokenizer)
    conv_to_image = torch.tensor([2, 0])
    qwen_ids, qwen_mask, qwen_labels, token_types = qwen_batch(input_ids, mask, labels, model.config.image_token_id)
    pixel_values, grid = pixel_inputs(clip_images[conv_to_image])

    def gsva_loss(features: torch.Tensor) -> torch.Tensor:
        spliced = backbone.splice(input_ids, mask, backbone.mm_projector(features), conv_to_image, labels)
        logits = backbone.lm_logits(backbone.last_hidden_states(spliced.inputs_embeds, None, spliced.token_ids))
        return F.cross_entropy(logits[:, :-1].flatten(0, 1), spliced.labels[:, 1:].flatten(), ignore_index=IGNORE_INDEX)

    with torch.no_grad():
        cache = torch.cat([backbone.vision_features(image.unsqueeze(0)) for image in clip_images])  # one image at a time
        from_cache = gsva_loss(cache.clone())
        from_pixels = gsva_loss(backbone.vision_features(clip_images))
        reference = model(
            input_ids=qwen_ids, attention_mask=qwen_mask, pixel_values=pixel_values, image_grid_thw=grid,
            mm_token_type_ids=token_types, labels=qwen_labels,
        ).loss
    cache_difference = (from_cache - from_pixels).abs().item()
    reference_difference = (from_pixels - reference).abs().item()
    assert cache_difference < 1e-5 and reference_difference < 1e-5, (cache_difference, reference_difference)
    print(f"loss {reference.item():.4f}: |cache - pixels| {cache_difference:.2e}, |pixels - Qwen| {reference_difference:.2e}")


def test_generated_states_are_the_teacher_forced_states(tokenizer):
    """In float64, so that the comparison tests positions and cache, not the float32 rounding of two
    matmul orders (float32 measured: 7e-6 at this initialiser range, 5e-7 at Qwen's 0.02)."""
    backbone = Qwen25VLBackbone.from_hf(tiny_qwen(tokenizer, tie_word_embeddings=False).double())  # lm_head rows move alone
    input_ids, mask, labels = gsva_batch(tokenizer)
    prompt_mask = mask & (torch.arange(input_ids.shape[1]) < (labels != IGNORE_INDEX).long().argmax(1, keepdim=True))
    seg, eos, pad = tokenizer.convert_tokens_to_ids("[SEG]"), tokenizer.eos_token_id, tokenizer.pad_token_id

    with torch.no_grad():
        features = backbone.vision_features(images())

        def generate() -> GreedyGeneration:
            spliced = backbone.splice(input_ids, prompt_mask, features, torch.arange(2))  # answers stay in place, masked out
            return backbone.generate_from_embeds(spliced.inputs_embeds, spliced.attention_mask, spliced.token_ids, 6, eos, pad)

        first = generate()
        lm_head = backbone.language_model.lm_head.weight
        lm_head[seg] = 2 * first.states[0, 2] / first.states[0, 2].norm()  # [SEG] wins somewhere in row 0
        lm_head[eos] = 2 * first.states[1, 2] / first.states[1, 2].norm()  # row 1 ends early, eos outscoring [SEG]
        generation = generate()
        assert (generation.tokens[0] == seg).any() and not (generation.tokens[0] == seg).all()
        after_eos = F.pad((generation.tokens == eos).long().cumsum(1)[:, :-1], (1, 0)) > 0
        assert after_eos[1].any() and (generation.tokens[after_eos] == pad).all()

        prompts = [ids[valid].tolist() for ids, valid in zip(input_ids, prompt_mask)]
        forced_ids = padded([prompt + tokens.tolist() for prompt, tokens in zip(prompts, generation.tokens)], pad)
        spliced = backbone.splice(forced_ids, torch.ones_like(forced_ids, dtype=torch.bool), features, torch.arange(2))
        hidden = backbone.last_hidden_states(spliced.inputs_embeds, None, spliced.token_ids)
        steps = torch.arange(generation.tokens.shape[1])
        rows = torch.arange(2).repeat_interleave(len(steps))
        cols = torch.tensor([len(prompt) - 1 for prompt in prompts]).repeat_interleave(len(steps)) + steps.repeat(2)
        forced = hidden[rows, backbone.spliced_positions(forced_ids, rows, cols, PATCHES)].view(2, len(steps), -1)
    difference = (generation.states - forced).abs().max().item()
    seg_difference = (generation.states - forced)[generation.tokens == seg].abs().max().item()
    assert difference < 1e-10, difference
    assert torch.equal(backbone.lm_logits(forced).argmax(-1)[~after_eos], generation.tokens[~after_eos])
    print(f"max |generated - teacher-forced states| {difference:.2e} over {generation.tokens.numel()} tokens, "
          f"{seg_difference:.2e} over the {int((generation.tokens == seg).sum())} [SEG]")


def test_generation_follows_qwen_generate(tokenizer):
    """Against Qwen's own ``generate`` from input ids and pixels (left-padded, M-RoPE deltas); float64."""
    model = tiny_qwen(tokenizer).double()
    backbone = Qwen25VLBackbone.from_hf(model)
    clip_images = images()
    input_ids, mask, labels = gsva_batch(tokenizer)
    prompt_mask = mask & (torch.arange(input_ids.shape[1]) < (labels != IGNORE_INDEX).long().argmax(1, keepdim=True))
    qwen_ids, qwen_mask, _, token_types = qwen_batch(input_ids, prompt_mask, labels, model.config.image_token_id)
    qwen_ids, qwen_mask, token_types = left_padded(qwen_mask, qwen_ids, qwen_mask, token_types)
    pixel_values, grid = pixel_inputs(clip_images)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    with torch.no_grad():
        reference = model.generate(
            input_ids=qwen_ids, attention_mask=qwen_mask, pixel_values=pixel_values, image_grid_thw=grid,
            mm_token_type_ids=token_types, max_new_tokens=6, do_sample=False, output_hidden_states=True,
            return_dict_in_generate=True, eos_token_id=eos, pad_token_id=pad,
        )
        spliced = backbone.splice(input_ids, prompt_mask, backbone.vision_features(clip_images), torch.arange(2))
        ours = backbone.generate_from_embeds(spliced.inputs_embeds, spliced.attention_mask, spliced.token_ids, 6, eos, pad)
    reference_states = torch.stack([step[-1][:, -1] for step in reference.hidden_states], dim=1)
    assert torch.equal(ours.tokens, reference.sequences[:, qwen_ids.shape[1]:])
    difference = (ours.states - reference_states).abs().max().item()
    assert difference < 1e-10, difference
    print(f"max |ours - Qwen generate states| {difference:.2e}")


@pytest.mark.parametrize("tie_word_embeddings", [True, False])
def test_new_token_rows_keep_lm_head_consistent(tokenizer, tie_word_embeddings):
    backbone = Qwen25VLBackbone.from_hf(tiny_qwen(tokenizer, base_size(tokenizer), tie_word_embeddings))
    before = backbone.language_model.get_output_embeddings().weight.detach().clone()
    resize_token_rows(backbone.language_model, len(tokenizer), "mean")
    embeddings = backbone.language_model.get_input_embeddings().weight
    lm_head = backbone.language_model.get_output_embeddings()
    assert torch.equal(lm_head.weight[: base_size(tokenizer)], before)
    assert embeddings.shape[0] == lm_head.weight.shape[0] == lm_head.out_features == len(tokenizer)
    assert (lm_head.weight is embeddings) == tie_word_embeddings
    assert backbone.config.text_config.vocab_size == len(tokenizer)
    seg = tokenizer.convert_tokens_to_ids("[SEG]")
    assert backbone.embed_tokens(torch.tensor([seg])).shape == (1, backbone.hidden_size)


@pytest.mark.parametrize("tie_word_embeddings", [True, False])
def test_save_and_load_give_the_same_logits(tokenizer, tmp_path, tie_word_embeddings):
    backbone = Qwen25VLBackbone.from_hf(tiny_qwen(tokenizer, base_size(tokenizer), tie_word_embeddings))
    resize_token_rows(backbone.language_model, len(tokenizer), "mean")
    backbone.save_pretrained(tmp_path)
    loaded = load_qwen2_5_vl(tmp_path, torch.float32).eval()
    assert (loaded.language_model.lm_head.weight is loaded.language_model.get_input_embeddings().weight) == tie_word_embeddings
    input_ids, mask, _ = gsva_batch(tokenizer)
    clip_images = images()

    def logits(model: Qwen25VLBackbone) -> torch.Tensor:
        spliced = model.splice(input_ids, mask, model.vision_features(clip_images), torch.arange(2))
        return model.lm_logits(model.last_hidden_states(spliced.inputs_embeds, spliced.attention_mask, spliced.token_ids))

    with torch.no_grad():
        difference = (logits(backbone) - logits(loaded)).abs().max().item()
    assert difference == 0.0, difference
    loaded_state = loaded.state_dict()
    assert all(torch.equal(tensor, loaded_state[name]) for name, tensor in backbone.state_dict().items())


def test_lora_lands_in_the_language_model_only(tokenizer):
    names = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    bare = Qwen25VLBackbone.from_hf(tiny_qwen(tokenizer))
    inject_adapter_in_model(LoraConfig(r=4, target_modules=names), bare)
    assert any(".lora_" in name and name.startswith("visual.") for name, _ in bare.named_parameters())  # what bare names do

    for root in ("backbone", "language_model"):
        backbone = Qwen25VLBackbone.from_hf(tiny_qwen(tokenizer))
        target = backbone if root == "backbone" else backbone.language_model
        inject_adapter_in_model(LoraConfig(r=4, target_modules=backbone.lora_target_modules(names)), target)
        adapted = {name.split(".lora_")[0] for name, _ in backbone.named_parameters() if ".lora_" in name}
        assert adapted and all(name.startswith("language_model.model.layers.") for name in adapted)
        assert len(adapted) == len(names) * backbone.language_model.config.num_hidden_layers


def wrong_kind_directory(kind: str, directory) -> str:
    """Save a tiny checkpoint of another kind; returns the model_type it writes."""
    if kind == "llava":
        config = LlavaConfig(
            text_config=LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2),
            vision_config=CLIPVisionConfig(
                hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=28, patch_size=14
            ),
            image_token_index=63,
        )
        LlavaForConditionalGeneration(config).save_pretrained(str(directory))
        return "llava"
    text_only = Qwen2Config(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    text_only.save_pretrained(str(directory))
    return "qwen2"


@pytest.mark.parametrize("kind", ["llava", "qwen2"])
def test_another_kind_of_checkpoint_is_refused(tmp_path, kind):
    model_type = wrong_kind_directory(kind, tmp_path)
    with pytest.raises(ValueError) as error:
        load_qwen2_5_vl(tmp_path, torch.float32)
    message = str(error.value)
    assert str(tmp_path) in message and repr(model_type) in message and "'qwen2_5_vl'" in message


def test_chat_labels_cover_exactly_the_answers(tokenizer):
    conversation = CONVERSATIONS[1]
    tokenized = tokenize_conversation(ChatTemplate(tokenizer).render(conversation), tokenizer)
    assert tokenized.input_ids.count(IMAGE_TOKEN_INDEX) == 1
    at = tokenized.input_ids.index(IMAGE_TOKEN_INDEX)
    assert tokenizer.convert_ids_to_tokens(tokenized.input_ids[at - 1 : at + 2 : 2]) == ["<|vision_start|>", "<|vision_end|>"]
    supervised = [index for index, label in enumerate(tokenized.labels) if label != IGNORE_INDEX]
    runs = np.split(np.array(supervised), np.flatnonzero(np.diff(supervised) > 1) + 1)
    answers = [tokenizer.decode([tokenized.input_ids[i] for i in run]) for run in runs]
    assert answers == [answer + "<|im_end|>\n" for _, answer in conversation]
    assert all(tokenized.labels[i] == tokenized.input_ids[i] for i in supervised)
    before_first = tokenizer.decode([i for i in tokenized.input_ids[: runs[0][0]] if i != IMAGE_TOKEN_INDEX])
    assert before_first.endswith("<|im_start|>assistant\n")
    assert before_first.startswith("<|im_start|>system\n")
