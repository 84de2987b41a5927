"""Question and answer phrasings of GSVA prompts, and the settings that render them.

A generalized prompt names several targets joined with commas; the answer has one slot per
target, in the same order: ``"Sure, left dog: [SEG], cow: [REJ]."``. A sample with a single
existing target may instead use the classic single-``[SEG]`` phrasing that LLaVA-based
segmentation models were first trained with ("Can you segment the dog in this image?" ->
"Sure, [SEG]."); long reasoning queries are asked as they are ("{sentence} Please output the
segmentation mask."). Training draws the phrasing at random; evaluation uses a named, fixed
question (``--question-template``).

Training phrasings come in two styles (``data.prompt_style``, ``TRAIN_PHRASINGS``): ``gsva``, this
project's, and ``gsva_release``, the question and answer sets of the authors' released training code
rendered character for character (see ``RELEASE_PHRASING``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

from gsva.text.conversation import ConversationFormat
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

EXPLAIN_REQUESTS = (
    "Please output the segmentation mask and explain why.",
    "Please output the segmentation mask and explain the reason.",
)
"""Replace the closing request of a sentence question (after the query and a space) when the answer
carries an explanation."""

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
    """How prompts are rendered for one model: its conversation template, image marker and slot tokens."""

    template: ConversationFormat
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
    backbone_image_marker: str | None = None
    """The image in a question as the backbone writes it, around the image placeholder (Qwen2.5-VL:
    ``<|vision_start|><image><|vision_end|>``, InternVL: ``<img><image></img>``, LLaVA-NeXT: the
    bare ``<image>``); None = LLaVA's, by ``use_im_start_end``."""

    def __post_init__(self) -> None:
        marker = self.backbone_image_marker
        if marker is None:
            return
        if marker.count(IMAGE_PLACEHOLDER) != 1:
            raise ValueError(f"image marker {marker!r} must hold the image placeholder {IMAGE_PLACEHOLDER} once")
        if self.use_im_start_end:
            raise ValueError(
                f"image marker {marker!r} is the backbone's own: it excludes LLaVA's {IM_START_TOKEN}/{IM_END_TOKEN} "
                "wrapping (use_im_start_end)"
            )

    def eval_expression(self, text: str) -> str:
        return text.strip().lower().strip().strip(".") if self.release_text_normalization else text

    @property
    def image_marker(self) -> str:
        """The image in a question's text: the backbone's marker, else ``<image>`` (wrapped in
        ``<im_start>``/``<im_end>`` when ``use_im_start_end``)."""
        if self.backbone_image_marker is not None:
            return self.backbone_image_marker
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
    tokens = answer_tokens(exists, seg_tokens or [SEG_TOKEN] * len(expressions))
    return AnswerForm("{slots}", "{obj}" + separator + "{token}").render(expressions, tokens, ", ")


def answer_tokens(exists: list[bool], seg_tokens: list[str]) -> list[str]:
    """The token answering each slot: its ``[SEG]`` token when the target exists, else ``[REJ]``."""
    return [token if present else REJ_TOKEN for present, token in zip(exists, seg_tokens)]


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


@dataclass(frozen=True)
class AnswerForm:
    """A multi-target answer: ``frame`` holds the slots (``{slots}``), each written by ``slot`` from
    its expression (``{obj}``) and its token (``{token}``)."""

    frame: str
    slot: str

    def render(self, expressions: list[str], tokens: list[str], joiner: str) -> str:
        """The answer naming each expression with its token, slots joined by ``joiner``."""
        slots = [self.slot.format(obj=expression, token=token) for expression, token in zip(expressions, tokens)]
        return self.frame.format(slots=joiner.join(slots))


ReasoningAnswer = Literal["mask", "explained", "text_only"]
"""How a reasoning query is answered: ``[SEG]``, ``[SEG]`` followed by the image's explanation,
or the explanation alone (no slot, no mask)."""


@dataclass(frozen=True)
class TrainPhrasing:
    """The training questions and answers of one prompt style, and how it writes expressions."""

    questions: tuple[str, ...]
    """Multi-target questions; ``{objs}`` = the expressions joined by ", "."""
    answers: tuple[AnswerForm, ...]
    single_questions: tuple[str, ...]
    """Single-target questions (``{obj}``): the classic phrasing of a one-target sample, and of a
    short reasoning query when ``short_queries_as_targets`` is False."""
    sentence_questions: tuple[str, ...]
    """Questions of a reasoning query that is a whole sentence (``{sentence}``)."""
    explain_requests: tuple[str, ...]
    """Closing request of a reasoning query whose answer carries an explanation."""
    single_answers: tuple[str, ...]
    """Answers of a single-target question (``{slot}``)."""
    release_text: bool
    """Write expressions as the authors' released training code does: surrounding spaces, then
    leading and trailing dots, stripped (it strips referring expressions; no class name has
    either), lower-cased in the question only, class names with their underscores kept. False:
    expressions as written, underscores of class names as spaces."""
    sem_seg_joiner: str
    """What separates the slots of a semantic segmentation answer (", " in every other answer)."""
    short_queries_as_targets: bool
    """A short (not sentence) reasoning query is asked like a referring expression, with the
    multi-target questions, rather than with ``single_questions``."""

    def draw(self, rng: random.Random) -> tuple[str, AnswerForm]:
        """(multi-target question, answer form) drawn uniformly."""
        return rng.choice(self.questions), rng.choice(self.answers)

    def slot_joiner(self, task: str) -> str:
        """What separates the slots of a multi-target answer in a sample of ``task``."""
        return self.sem_seg_joiner if task == "sem_seg" else ", "

    def expression(self, text: str) -> str:
        """An expression as a training answer names it."""
        return text.strip().strip(".") if self.release_text else text

    def asked(self, text: str) -> str:
        """An expression as a training question names it."""
        return self.expression(text).lower() if self.release_text else text

    def query(self, text: str) -> str:
        """A short reasoning query as a single-target question names it."""
        return text.lower() if self.release_text else text

    def multi_target_turn(
        self, texts: list[str], tokens: list[str], question: str, answer: AnswerForm, joiner: str, image_marker: str
    ) -> tuple[str, str]:
        """(question, answer) naming ``texts`` in order, slot i answered by ``tokens[i]``."""
        asked = question_text([self.asked(text) for text in texts], question, image_marker)
        return asked, answer.render([self.expression(text) for text in texts], tokens, joiner)


GSVA_PHRASING = TrainPhrasing(
    questions=TRAIN_QUESTIONS,
    answers=tuple(AnswerForm(frame, "{obj}: {token}") for frame in ANSWERS),
    single_questions=SINGLE_TARGET_QUESTIONS,
    sentence_questions=SENTENCE_QUESTIONS,
    explain_requests=EXPLAIN_REQUESTS,
    single_answers=SINGLE_ANSWERS,
    release_text=False,
    sem_seg_joiner=", ",
    short_queries_as_targets=True,
)

RELEASE_PHRASING = TrainPhrasing(
    questions=(
        "Can you segment {objs} in this image?",
        "Please segment {objs} in this image.",
        "What are {objs} in this image? Please respond with segmentation masks.",
        "What are {objs} in this image? Please output segmentation masks.",
    ),
    answers=(
        AnswerForm("The segmentation results are {slots}.", "{obj} {token}"),
        AnswerForm("Sure, they are {slots}.", "{obj}:{token}"),
        AnswerForm("Sure, {slots}.", "the mask of {obj} is {token}"),
        AnswerForm("Sure, {slots}.", "the segmentation of {obj} is {token}"),
        AnswerForm("Sure, {slots}.", "the referred {obj} is {token}"),
    ),
    single_questions=(
        "Can you segment the {obj} in this image?",
        "Please segment the {obj} in this image.",
        "What is {obj} in this image? Please respond with segmentation mask.",
        "What is {obj} in this image? Please output segmentation mask.",
    ),
    sentence_questions=(
        "{sentence} Please respond with segmentation mask.",
        "{sentence} Please output segmentation mask.",
    ),
    explain_requests=(
        "Please output segmentation mask and explain why.",
        "Please output segmentation mask and explain the reason.",
        "Please output segmentation mask and give some explaination.",
    ),
    single_answers=SINGLE_ANSWERS,
    release_text=True,
    sem_seg_joiner=",",
    short_queries_as_targets=False,
)
"""The training phrasing of the authors' released code, character for character (its spelling
"explaination" included): four multi-target questions and five answer forms drawn uniformly per
sample, "{start} {slot}, {slot}{end}" with slots joined by ", " (by "," without a space in semantic
segmentation samples), and LISA's single-target, sentence and explanation phrasings for reasoning
queries (data/refer_seg_dataset.py:259-285, data/sem_seg_dataset.py:306-333,
data/reason_seg_dataset.py:160-194 and model/llava/constants.py:29-95 of the release)."""

TRAIN_PHRASINGS: dict[str, TrainPhrasing] = {"gsva": GSVA_PHRASING, "gsva_release": RELEASE_PHRASING}
