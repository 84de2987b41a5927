"""Question and answer phrasings of GSVA prompts, and the settings that render them.

A generalized prompt names several targets joined with commas; the answer has one slot per
target, in the same order: ``"Sure, left dog: [SEG], cow: [REJ]."``. A sample with a single
existing target may instead use the classic single-``[SEG]`` phrasing that LLaVA-based
segmentation models were first trained with ("Can you segment the dog in this image?" ->
"Sure, [SEG]."); long reasoning queries are asked as they are ("{sentence} Please output the
segmentation mask."). Training draws the phrasing at random; evaluation uses a named, fixed
question (``--question-template``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from gsva.text.conversation import ConversationTemplate
from gsva.text.special_tokens import IM_END_TOKEN, IM_START_TOKEN, IMAGE_PLACEHOLDER, REJ_TOKEN, SEG_TOKEN

TRAIN_QUESTIONS = (
    "Please segment {objs} in this image.",
    "Can you segment {objs} in this image?",
    "What are {objs} in this image? Please output segmentation masks.",
    "Could you provide segmentation masks for {objs} in this image?",
)

EVAL_QUESTIONS = {
    "please": "Please segment {objs} in this image.",
    "what": "What are {objs} in this image? Please output segmentation masks.",
    "where": "Where are {objs} in this image? Please output segmentation masks.",
    "show": "Show me {objs} in the image with segmentation masks.",
    "outline": "Outline {objs} in this image with segmentation masks.",
}

ANSWERS = (
    "Sure, {slots}.",
    "{slots}.",
    "Sure, the result is {slots}.",
)

SINGLE_TARGET_QUESTIONS = (
    "Can you segment the {obj} in this image?",
    "Please segment the {obj} in this image.",
    "What is {obj} in this image? Please respond with a segmentation mask.",
    "What is {obj} in this image? Please output the segmentation mask.",
)
"""Classic single-target phrasing; ``{obj}`` is a short expression or class name."""

SENTENCE_QUESTIONS = (
    "{sentence} Please respond with a segmentation mask.",
    "{sentence} Please output the segmentation mask.",
)
"""Phrasing of a long query that is a whole sentence (reasoning segmentation)."""

EXPLAIN_SUFFIXES = (
    " Please output the segmentation mask and explain why.",
    " Please output the segmentation mask and explain the reason.",
)
"""Replace the closing request of a sentence question when the answer carries an explanation."""

EVAL_SINGLE_QUESTIONS = {
    "lisa": "What is {obj} in this image? Please output the segmentation mask.",
    "ade20k": "What is {obj} in this image?",
    "sentence": "{sentence} Please output the segmentation mask.",
}
"""Fixed single-target evaluation questions: the LISA-style prompt of single-target benchmarks,
the paper's ADE20K prompt (Table A5), and reasoning queries."""

EVAL_SINGLE_ANSWER = "Sure, {slot}."

RELEASE_EVAL_PROMPT = {
    "eval_question": " What are {objs}in this image? Please output segmentation masks.",
    "eval_answer": "Sure,{slots}.",
    "slot_separator": ":",
    "release_text_normalization": True,
}
"""The gRefCOCO evaluation prompt of the authors' released code, character for character (leading
space, no space before "in", "Sure,a:[SEG], b:[REJ]."), with its lower-cased expressions: their
published numbers were scored with it (``eval.py --prompt-style gsva_release``)."""

SINGLE_ANSWERS = (
    "It is {slot}.",
    "Sure, {slot}.",
    "Sure, it is {slot}.",
    "Sure, the segmentation result is {slot}.",
    "{slot}.",
)


@dataclass(frozen=True)
class PromptSettings:
    """How prompts are rendered for one model: its conversation template and slot tokens."""

    template: ConversationTemplate
    seg_tokens: list[str]
    """Token of each slot position: one shared ``[SEG]``, or the individual ones (slot i uses i mod N)."""
    use_im_start_end: bool
    use_rej_token: bool = True
    """False = the LISA baseline: absent targets are left out of training prompts, and every
    evaluation slot is answered ``[SEG]`` (the model never rejects)."""
    eval_question: str = "Please segment {objs} in this image."
    eval_answer: str = ANSWERS[0]
    slot_separator: str = ": "
    release_text_normalization: bool = False
    """Lower-case evaluation expressions and strip their spaces and final dots, as the authors'
    released evaluation does (``RELEASE_EVAL_PROMPT``)."""

    def eval_expression(self, text: str) -> str:
        return text.strip().lower().strip().strip(".") if self.release_text_normalization else text

    @property
    def image_marker(self) -> str:
        if self.use_im_start_end:
            return IM_START_TOKEN + IMAGE_PLACEHOLDER + IM_END_TOKEN
        return IMAGE_PLACEHOLDER

    def slot_tokens(self, count: int) -> list[str]:
        return [self.seg_tokens[index % len(self.seg_tokens)] for index in range(count)]


def format_slots(
    expressions: list[str], exists: list[bool], seg_tokens: list[str] | None = None, separator: str = ": "
) -> str:
    """``"a: [SEG], b: [REJ]"``; ``seg_tokens`` gives the token of each slot (individual-[SEG]
    ablation), ``separator`` what stands between an expression and its token."""
    tokens = seg_tokens or [SEG_TOKEN] * len(expressions)
    return ", ".join(
        f"{expression}{separator}{token if present else REJ_TOKEN}"
        for expression, present, token in zip(expressions, exists, tokens)
    )


def question_text(expressions: list[str], template: str, image_marker: str = IMAGE_PLACEHOLDER) -> str:
    """The user turn: image marker, newline, question naming the expressions joined by commas."""
    return f"{image_marker}\n" + template.format(objs=", ".join(expressions))


def resolve_eval_question(name_or_template: str) -> str:
    """A named evaluation question, or a custom template that contains ``{objs}``."""
    if name_or_template in EVAL_QUESTIONS:
        return EVAL_QUESTIONS[name_or_template]
    if "{objs}" not in name_or_template:
        raise ValueError(
            f"question template {name_or_template!r} is neither one of {sorted(EVAL_QUESTIONS)} "
            "nor a custom template containing {objs}"
        )
    return name_or_template


def sample_train_phrasing(rng: random.Random) -> tuple[str, str]:
    """(question template, answer template) drawn uniformly."""
    return rng.choice(TRAIN_QUESTIONS), rng.choice(ANSWERS)
