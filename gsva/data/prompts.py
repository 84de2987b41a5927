"""Question and answer phrasings of GSVA prompts.

A prompt names several referring expressions joined with commas; the answer has one slot per
expression, in the same order: ``"Sure, left dog: [SEG], cow: [REJ]."``. Training draws the
phrasing at random; evaluation uses a named, fixed question (``--question-template``).
"""

from __future__ import annotations

import random

from gsva.special_tokens import IMAGE_PLACEHOLDER, REJ_TOKEN, SEG_TOKEN

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


def format_slots(expressions: list[str], exists: list[bool], seg_tokens: list[str] | None = None) -> str:
    """``"a: [SEG], b: [REJ]"``; ``seg_tokens`` gives the token of each slot (individual-[SEG] ablation)."""
    tokens = seg_tokens or [SEG_TOKEN] * len(expressions)
    return ", ".join(
        f"{expression}: {token if present else REJ_TOKEN}"
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
