"""[SEG]/[REJ] must encode to exactly one id wherever they stand, with a byte-level BPE and with a
SentencePiece LLaMA-style tokenizer (a split [SEG] would double the masks, as Llama-2 did in LISA)."""

import io
import json

import pytest
import sentencepiece as spm
from transformers import AutoTokenizer

from gsva.text.conversation import get_template
from gsva.text.prompts import format_slots, question_text
from gsva.text.conversation_tokens import tokenize_conversation
from gsva.text.tokenizer import add_task_tokens, load_tokenizer
from gsva.text.special_tokens import IGNORE_INDEX, IMAGE_PLACEHOLDER, IMAGE_TOKEN_INDEX

TEXTS = [
    "[SEG]",
    " [SEG]",
    "Sure, red: [SEG], blue: [REJ].",
    "red:[SEG],[REJ]",
    "Sure,[REJ] [SEG][SEG]",
    "left dog:  [SEG]\n[REJ]",
]


@pytest.fixture(scope="module")
def sentencepiece_dir(tmp_path_factory):
    corpus = ["Please segment red, blue in this image.", "Sure, red: [SEG], blue: [REJ].", "USER: ASSISTANT:"] * 50
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus), model_writer=model, vocab_size=320, model_type="bpe",
        byte_fallback=True, character_coverage=1.0, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
    )
    directory = tmp_path_factory.mktemp("sentencepiece")
    (directory / "tokenizer.model").write_bytes(model.getvalue())
    (directory / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"})
    )
    return directory


@pytest.fixture(params=["bpe", "sentencepiece"])
def tokenizer(request, tokenizer_dir, sentencepiece_dir):
    directory = tokenizer_dir if request.param == "bpe" else sentencepiece_dir
    tokenizer = load_tokenizer(directory, 512)
    add_task_tokens(tokenizer, ["[SEG]", "[REJ]"])
    return tokenizer


@pytest.mark.parametrize("text", TEXTS)
def test_slot_tokens_are_single_ids(tokenizer, text):
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    seg, rej = tokenizer.convert_tokens_to_ids(["[SEG]", "[REJ]"])
    assert ids.count(seg) == text.count("[SEG]")
    assert ids.count(rej) == text.count("[REJ]")
    pieces = tokenizer.convert_ids_to_tokens([i for i in ids if i not in (seg, rej)])
    assert not any("SEG" in piece or "REJ" in piece for piece in pieces)


def test_sentencepiece_tokenizer_is_llama_style(sentencepiece_dir):
    tokenizer = AutoTokenizer.from_pretrained(str(sentencepiece_dir))
    assert type(tokenizer).__name__ == "LlamaTokenizer"
    assert tokenizer.convert_ids_to_tokens(tokenizer("red blue", add_special_tokens=False)["input_ids"])[0].startswith("▁")


def test_labels_cover_exactly_the_answer(tokenizer):
    template = get_template("llava_v1")
    answer = "Sure, " + format_slots(["red", "blue shapes"], [True, False]) + "."
    rendered = template.render([(question_text(["red", "blue shapes"], "Please segment {objs} in this image."), answer)])
    tokens = tokenize_conversation(rendered, tokenizer)
    assert tokens.input_ids.count(IMAGE_TOKEN_INDEX) == 1
    assert tokens.input_ids[0] == tokenizer.bos_token_id
    supervised = [token for token, label in zip(tokens.input_ids, tokens.labels) if label != IGNORE_INDEX]
    assert all(label in (IGNORE_INDEX, token) for token, label in zip(tokens.input_ids, tokens.labels))
    assert tokenizer.decode(supervised).replace(" ", "") == (answer + "</s>").replace(" ", "")
    first = next(i for i, label in enumerate(tokens.labels) if label != IGNORE_INDEX)
    assert all(label == IGNORE_INDEX for label in tokens.labels[:first])
    assert tokenizer.decode([t for t in tokens.input_ids[:first] if t >= 0]).rstrip().endswith("ASSISTANT:")


def test_multi_turn_labels_skip_user_turns(tokenizer):
    rendered = get_template("llava_v1").render([(IMAGE_PLACEHOLDER + "\nIs there red?", "Yes."), ("And blue?", "No.")])
    tokens = tokenize_conversation(rendered, tokenizer)
    supervised = tokenizer.decode([t for t, label in zip(tokens.input_ids, tokens.labels) if label != IGNORE_INDEX])
    assert supervised.replace(" ", "") == "Yes.</s>No.</s>"
