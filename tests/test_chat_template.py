"""Conversations rendered by a checkpoint tokenizer's own chat template (``data.conversation:
chat_template``, Qwen2.5-VL and InternVL): answer spans, labels, generation prompts, the backbone's
image marker, BOS handling and the errors of a tokenizer or template that cannot be used. Locally
built byte-level BPE tokenizers with a ChatML (Qwen-style) template."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from transformers import PreTrainedTokenizerBase

from gsva.config import load_config
from gsva.data.sample_builder import EvalQuery, SampleBuilder, SampleSettings, SlotTarget
from gsva.model.backbones.internvl import IMAGE_MARKER as INTERNVL_IMAGE_MARKER
from gsva.model.backbones.qwen2_5_vl import IMAGE_MARKER as QWEN_IMAGE_MARKER
from gsva.text.conversation import CHAT_TEMPLATE, ChatTemplate, get_template
from gsva.text.prompts import PromptSettings, question_text
from gsva.text.special_tokens import IGNORE_INDEX, IMAGE_PLACEHOLDER, IMAGE_TOKEN_INDEX, REJ_TOKEN, SEG_TOKEN
from gsva.text.conversation_tokens import TokenizedConversation, tokenize_conversation
from gsva.text.tokenizer import add_task_tokens, load_tokenizer, train_tiny_bpe
from gsva.text.vocabulary import build_vocabulary

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<img>", "</img>")
CHATML = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
"""Qwen2.5's chat template for text messages: a default system turn, ``<|im_end|>\\n`` after each turn."""
BOS_CHATML = "{{ bos_token }}" + CHATML
"""A template that writes the BOS token itself (as Llama 3's does)."""
CORPUS = [
    "You are a helpful assistant. Please segment red, blue in this image. Sure, red: [SEG], blue: [REJ].",
    "Is there a circle? Yes, a small one. And a square? No. What colour is the star? It is yellow.",
] * 20
TURNS = [
    (f"{QWEN_IMAGE_MARKER}\nIs there a circle?", "Yes, a small one."),
    ("And a square?", "No."),
    ("Please segment the circle.", "Sure, [SEG]."),
]


def tokenizer_directory(directory: Path, chat_template: str | None, bos_token: str | None) -> Path:
    """A Qwen-style tokenizer directory: byte-level BPE, ChatML special tokens, eos ``<|im_end|>``,
    pad ``<|endoftext|>``, ``bos_token`` (None: no BOS, as Qwen's) and ``chat_template``."""
    trained = train_tiny_bpe(CORPUS, 300, directory, extra_tokens=SPECIAL_TOKENS)
    trained.eos_token, trained.pad_token, trained.bos_token = "<|im_end|>", "<|endoftext|>", bos_token
    trained.chat_template = chat_template
    trained.save_pretrained(str(directory))
    return directory


def loaded(directory: Path) -> PreTrainedTokenizerBase:
    """The tokenizer of ``directory`` with GSVA's [SEG] and [REJ]."""
    tokenizer = load_tokenizer(directory, 512)
    add_task_tokens(tokenizer, [SEG_TOKEN, REJ_TOKEN])
    return tokenizer


@pytest.fixture(scope="module")
def qwen_directory(tmp_path_factory) -> Path:
    return tokenizer_directory(tmp_path_factory.mktemp("chatml"), CHATML, None)


@pytest.fixture(scope="module")
def qwen_tokenizer(qwen_directory) -> PreTrainedTokenizerBase:
    return loaded(qwen_directory)


def supervised_runs(tokenizer: PreTrainedTokenizerBase, tokens: TokenizedConversation) -> list[str]:
    """The decoded runs of consecutive supervised tokens."""
    positions = [index for index, label in enumerate(tokens.labels) if label != IGNORE_INDEX]
    runs = np.split(np.array(positions), np.flatnonzero(np.diff(positions) > 1) + 1)
    return [tokenizer.decode([tokens.input_ids[index] for index in run]) for run in runs if len(run)]


def test_labels_cover_exactly_each_answer_and_its_end_of_turn(qwen_tokenizer):
    tokens = tokenize_conversation(ChatTemplate(qwen_tokenizer).render(TURNS), qwen_tokenizer)
    assert supervised_runs(qwen_tokenizer, tokens) == [answer + "<|im_end|>\n" for _, answer in TURNS]
    assert all(label in (IGNORE_INDEX, token) for token, label in zip(tokens.input_ids, tokens.labels))


def test_each_generation_prompt_is_the_render_before_its_answer(qwen_tokenizer):
    template = ChatTemplate(qwen_tokenizer)
    full = template.render(TURNS)
    for index, (question, _) in enumerate(TURNS):
        prompt = template.render([*TURNS[:index], (question, None)])
        assert prompt.text == full.text[: full.answer_spans[index][0]]
        assert prompt.text.endswith("<|im_start|>assistant\n")
        assert prompt.answer_spans == full.answer_spans[:index]
    assert full.text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n")


def test_generation_prompt_has_no_labels(qwen_tokenizer):
    prompt = ChatTemplate(qwen_tokenizer).render([(TURNS[0][0], None)])
    tokens = tokenize_conversation(prompt, qwen_tokenizer)
    assert set(tokens.labels) == {IGNORE_INDEX}


@pytest.mark.parametrize(
    "marker, wrapper",
    [(QWEN_IMAGE_MARKER, ("<|vision_start|>", "<|vision_end|>")), (INTERNVL_IMAGE_MARKER, ("<img>", "</img>"))],
)
def test_the_image_is_one_placeholder_inside_the_backbone_wrapper(qwen_tokenizer, marker, wrapper):
    question = question_text(["red", "blue"], "Please segment {objs} in this image.", marker)
    rendered = ChatTemplate(qwen_tokenizer).render([(question, "Sure, red: [SEG], blue: [REJ].")])
    tokens = tokenize_conversation(rendered, qwen_tokenizer)
    assert tokens.input_ids.count(IMAGE_TOKEN_INDEX) == 1
    at = tokens.input_ids.index(IMAGE_TOKEN_INDEX)
    assert qwen_tokenizer.convert_ids_to_tokens(tokens.input_ids[at - 1 : at + 2 : 2]) == list(wrapper)
    assert tokens.labels[at - 1 : at + 2] == [IGNORE_INDEX] * 3


def test_a_tokenizer_without_bos_gets_none(qwen_tokenizer):
    tokens = tokenize_conversation(ChatTemplate(qwen_tokenizer).render(TURNS[:1]), qwen_tokenizer)
    assert qwen_tokenizer.bos_token_id is None
    assert tokens.input_ids[0] == qwen_tokenizer.convert_tokens_to_ids("<|im_start|>")


def test_a_template_that_writes_the_bos_keeps_a_single_one(tmp_path):
    tokenizer = loaded(tokenizer_directory(tmp_path, BOS_CHATML, "<s>"))
    rendered = ChatTemplate(tokenizer).render(TURNS[:1])
    tokens = tokenize_conversation(rendered, tokenizer)
    assert rendered.text.startswith("<s><|im_start|>system")
    assert tokens.input_ids[:2] == tokenizer.convert_tokens_to_ids(["<s>", "<|im_start|>"])
    assert tokens.input_ids.count(tokenizer.bos_token_id) == 1
    assert supervised_runs(tokenizer, tokens) == [TURNS[0][1] + "<|im_end|>\n"]


def test_a_tokenizer_without_chat_template_is_refused_naming_its_path(tmp_path):
    directory = tokenizer_directory(tmp_path, None, None)
    with pytest.raises(ValueError, match="no chat template") as error:
        ChatTemplate(loaded(directory))
    assert str(directory) in str(error.value)
    cfg = load_config(overrides=[f"model.tokenizer_path={directory}", "model.sam_type=tiny", f"data.conversation={CHAT_TEMPLATE}"])
    with pytest.raises(ValueError, match="no chat template") as error:
        build_vocabulary(cfg, use_im_start_end=False)
    assert str(directory) in str(error.value)


def test_the_chat_template_needs_a_tokenizer():
    with pytest.raises(ValueError, match="tokenizer"):
        get_template(CHAT_TEMPLATE)


def test_a_template_that_rewrites_earlier_turns_is_refused(tmp_path):
    counting = "{{ messages | length }} messages\n" + CHATML
    tokenizer = loaded(tokenizer_directory(tmp_path, counting, None))
    with pytest.raises(ValueError, match="prefix"):
        ChatTemplate(tokenizer).render(TURNS[:2])


def test_only_the_last_turn_may_ask_for_the_answer(qwen_tokenizer):
    with pytest.raises(ValueError, match="last turn"):
        ChatTemplate(qwen_tokenizer).render([(TURNS[0][0], None), TURNS[1]])


def test_build_vocabulary_prompts_with_the_checkpoint_template_and_the_backbone_marker(qwen_directory):
    cfg = load_config(overrides=[f"model.tokenizer_path={qwen_directory}", "model.sam_type=tiny", f"data.conversation={CHAT_TEMPLATE}"])
    vocabulary = build_vocabulary(cfg, use_im_start_end=False, image_marker=QWEN_IMAGE_MARKER)
    assert isinstance(vocabulary.prompts.template, ChatTemplate)
    assert vocabulary.prompts.image_marker == QWEN_IMAGE_MARKER
    builder = SampleBuilder(vocabulary.tokenizer, vocabulary.prompts, SampleSettings(sam_image_size=32, clip_image_size=16))
    masks = np.zeros((2, 8, 8), dtype=bool)
    targets = [SlotTarget("red", masks[0], True), SlotTarget("blue", masks[1], False)]
    query = EvalQuery(targets, "Please segment {objs} in this image.", {})
    conversation = builder.evaluation(np.zeros((8, 8, 3), dtype=np.uint8), [query]).conversations[0]
    at = conversation.input_ids.index(IMAGE_TOKEN_INDEX)
    tokens = vocabulary.tokenizer.convert_ids_to_tokens(conversation.input_ids[at - 1 : at + 2 : 2])
    assert tokens == ["<|vision_start|>", "<|vision_end|>"]
    tokenized = TokenizedConversation(conversation.input_ids, conversation.labels)
    assert supervised_runs(vocabulary.tokenizer, tokenized) == ["Sure, red: [SEG], blue: [REJ].<|im_end|>\n"]
    assert conversation.slot_exists == [True, False]


def test_without_a_backbone_marker_the_image_is_llava_s(qwen_directory):
    cfg = load_config(overrides=[f"model.tokenizer_path={qwen_directory}", "model.sam_type=tiny"])
    assert build_vocabulary(cfg, use_im_start_end=False).prompts.image_marker == IMAGE_PLACEHOLDER
    assert build_vocabulary(cfg, use_im_start_end=True).prompts.image_marker == "<im_start><image><im_end>"


@pytest.mark.parametrize("marker, use_im_start_end", [("<img></img>", False), ("<img><image><image></img>", False), (QWEN_IMAGE_MARKER, True)])
def test_a_backbone_marker_holds_the_placeholder_once_without_llava_wrapping(qwen_tokenizer, marker, use_im_start_end):
    with pytest.raises(ValueError, match="image marker"):
        PromptSettings(ChatTemplate(qwen_tokenizer), [SEG_TOKEN], use_im_start_end, backbone_image_marker=marker)


TYPED_TEMPLATE = (
    "{% for message in messages %}{{ message['role'].upper() + ': ' }}"
    "{% for item in message['content'] | selectattr('type', 'equalto', 'text') %}{{ item['text'] }}{% endfor %}"
    "{% if message['role'] == 'assistant' %}<|im_end|>{% endif %}{{ '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT: {% endif %}"
)
"""A template that reads typed content items only (as llava-hf's do): a string's text is dropped."""


def test_a_template_of_typed_content_items_gets_its_text(tmp_path):
    tokenizer = loaded(tokenizer_directory(tmp_path, TYPED_TEMPLATE, None))
    question, answer = TURNS[0]
    as_strings = tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False)
    assert question not in as_strings  # what a template of typed items does with plain strings, silently
    template = ChatTemplate(tokenizer)
    rendered = template.render(TURNS[:2])
    assert template.typed_content
    assert rendered.text.startswith(f"USER: {question}\nASSISTANT: {answer}<|im_end|>\nUSER: {TURNS[1][0]}")
    assert supervised_runs(tokenizer, tokenize_conversation(rendered, tokenizer)) == [
        f"{answer}<|im_end|>\n", f"{TURNS[1][1]}<|im_end|>\n",
    ]
    assert template.render([(question, None)]).text == f"USER: {question}\nASSISTANT: "


def test_plain_string_content_stays_plain(qwen_tokenizer):
    assert not ChatTemplate(qwen_tokenizer).typed_content


def test_a_template_that_writes_no_message_text_is_refused_naming_the_tokenizer(tmp_path):
    directory = tokenizer_directory(tmp_path, "{% for message in messages %}{{ message['role'] }}\n{% endfor %}", None)
    with pytest.raises(ValueError, match="neither plain-string nor typed") as error:
        ChatTemplate(loaded(directory)).render(TURNS[:1])
    assert str(directory) in str(error.value)
