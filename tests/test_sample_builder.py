"""The sample builder: phrasings, slots, the LISA baseline, dialogues and token limits."""

import random
import re
from dataclasses import replace

import numpy as np
import pytest

from gsva.data.bad_samples import BadSampleError
from gsva.text.prompts import SINGLE_ANSWERS
from gsva.data.sample_builder import EvalQuery, SlotTarget
from gsva.config import EvalConfig
from gsva.evaluation.benchmarks import builder_for
from gsva.text.special_tokens import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from tests.conftest import tiny_sample_builder

IMAGE = np.full((20, 30, 3), 100, dtype=np.uint8)


def targets() -> list[SlotTarget]:
    present = np.zeros((20, 30), dtype=bool)
    present[2:9, 3:12] = True
    return [SlotTarget("red", present, True), SlotTarget("blue", np.zeros((20, 30), dtype=bool), False)]


def full_text(tokenizer, conversation) -> str:
    return tokenizer.decode([t for t in conversation.input_ids if t != IMAGE_TOKEN_INDEX])


def answer_text(tokenizer, conversation) -> str:
    return tokenizer.decode([t for t, label in zip(conversation.input_ids, conversation.labels) if label != IGNORE_INDEX])


def test_generalized_sample_has_one_slot_per_target(tokenizer):
    sample = tiny_sample_builder(tokenizer).segmentation(IMAGE, targets(), random.Random(0), {})
    (conversation,) = sample.conversations
    assert conversation.slot_exists == [True, False]
    assert conversation.target_masks.shape == (2, 20, 30) and conversation.target_masks[0].sum() == 63
    answer = answer_text(tokenizer, conversation)
    assert "red: [SEG]" in answer and "blue: [REJ]" in answer
    assert conversation.input_ids.count(IMAGE_TOKEN_INDEX) == 1
    assert sample.sam_image.dtype.is_floating_point is False and sample.resized_size == (21, 32)
    assert tuple(sample.clip_image.shape) == (3, 16, 16)


def test_single_target_uses_the_classic_phrasing_at_its_rate(tokenizer):
    one = targets()[:1]
    always = tiny_sample_builder(tokenizer, single_target_rate=1.0).segmentation(IMAGE, one, random.Random(1), {})
    answer = answer_text(tokenizer, always.conversations[0])
    assert "red" not in answer and any(a.format(slot="[SEG]") in answer for a in SINGLE_ANSWERS)
    never = tiny_sample_builder(tokenizer, single_target_rate=0.0).segmentation(IMAGE, one, random.Random(1), {})
    assert "red: [SEG]" in answer_text(tokenizer, never.conversations[0])


def test_lisa_baseline_drops_absent_targets_in_training_and_never_rejects_in_evaluation(tokenizer):
    lisa = tiny_sample_builder(tokenizer, use_rej_token=False)
    trained = lisa.segmentation(IMAGE, targets(), random.Random(0), {}).conversations[0]
    assert trained.slot_exists == [True] and "blue" not in full_text(tokenizer, trained)
    evaluated = lisa.evaluation(IMAGE, [EvalQuery(targets(), lisa.prompts.eval_question, {})]).conversations[0]
    assert evaluated.slot_exists == [True, False]
    assert "blue: [SEG]" in answer_text(tokenizer, evaluated) and "[REJ]" not in full_text(tokenizer, evaluated)


def test_dialogue_has_no_slot_and_is_cut_at_the_token_limit(tokenizer):
    turns = [("<image>\nWhat is here?", "A red square. " * 40), ("And then?", "Nothing.")]
    full = tiny_sample_builder(tokenizer).dialogue(IMAGE, turns, {}).conversations[0]
    assert full.slot_exists == [] and full.target_masks.shape == (0, 20, 30)
    assert sum(label != IGNORE_INDEX for label in full.labels) > 40
    cut = tiny_sample_builder(tokenizer, max_tokens=60).dialogue(IMAGE, turns, {}).conversations[0]
    assert cut.input_ids == full.input_ids[:60] and cut.labels == full.labels[:60]


def test_training_prompt_over_the_limit_drops_targets_but_evaluation_keeps_it(tokenizer):
    many = [replace(targets()[0], text=f"red shape number {i}") for i in range(12)]
    cut = tiny_sample_builder(tokenizer, max_tokens=150).segmentation(IMAGE, many, random.Random(0), {"image_id": 7}).conversations[0]
    asked = len(cut.slot_exists)
    assert 1 <= asked < 12 and len(cut.input_ids) <= 150 and cut.metadata["dropped_expressions"] == 12 - asked
    assert cut.metadata["expressions"] == [target.text for target in many[:asked]]
    small = tiny_sample_builder(tokenizer, max_tokens=64)
    with pytest.raises(BadSampleError, match=r"data\.model_max_length=64"):
        small.segmentation(IMAGE, many, random.Random(0), {"image_id": 7})
    kept = small.evaluation(IMAGE, [EvalQuery(many, small.prompts.eval_question, {})]).conversations[0]
    assert len(kept.slot_exists) == 12 and len(kept.input_ids) > 64


def test_sentence_query_with_and_without_explanation(tokenizer):
    mask = targets()[0].mask
    plain = tiny_sample_builder(tokenizer).sentence(IMAGE, "the thing one sits on", mask, random.Random(0), None, {})
    explained = tiny_sample_builder(tokenizer).sentence(
        IMAGE, "the thing one sits on", mask, random.Random(0), "because chairs hold people", {}
    )
    assert "because chairs hold people" in answer_text(tokenizer, explained.conversations[0])
    assert "because" not in answer_text(tokenizer, plain.conversations[0])
    assert "explain" in full_text(tokenizer, explained.conversations[0])
    assert explained.conversations[0].slot_exists == [True]


def test_evaluation_asks_one_conversation_per_query_with_single_or_multi_questions(tokenizer):
    red, blue = targets()
    sample = tiny_sample_builder(tokenizer).evaluation(
        IMAGE,
        [
            EvalQuery([red, blue], "Please segment {objs} in this image.", {"keys": [1, 2]}),
            EvalQuery([blue], "What is {obj} in this image?", {"keys": [3]}),
        ],
    )
    first, second = sample.conversations
    assert first.slot_exists == [True, False] and second.slot_exists == [False]
    assert "red: [SEG], blue: [REJ]" in answer_text(tokenizer, first)
    assert answer_text(tokenizer, second).strip().startswith("Sure, [REJ]")
    assert "What is blue in this image?" in full_text(tokenizer, second)
    assert second.metadata == {"keys": [3], "expressions": ["blue"]}
    with pytest.raises(ValueError, match=re.escape("'What is {obj}?'")):
        tiny_sample_builder(tokenizer).evaluation(IMAGE, [EvalQuery([red, blue], "What is {obj}?", {})])


def test_release_prompt_reproduces_the_authors_evaluation_text(tokenizer):
    release = builder_for(tiny_sample_builder(tokenizer), EvalConfig(prompt_style="gsva_release"))
    red, blue = targets()
    query = EvalQuery([replace(red, text=" Left Dog."), blue], release.prompts.eval_question, {})
    conversation = release.evaluation(IMAGE, [query]).conversations[0]
    text = full_text(tokenizer, conversation)
    assert "USER: \n What are left dog, bluein this image? Please output segmentation masks. ASSISTANT:" in text
    assert text.endswith("ASSISTANT: Sure,left dog:[SEG], blue:[REJ].</s>")
    assert conversation.metadata["expressions"] == ["left dog", "blue"]
    assert builder_for(tiny_sample_builder(tokenizer), EvalConfig(prompt_style="gsva")).prompts.eval_answer == "Sure, {slots}."
