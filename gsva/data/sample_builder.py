"""From chosen targets (or dialogue turns) to an ``ImageSample``.

The one place where a training or evaluation sample is phrased, tokenised and paired with its
image and masks, whatever dataset it comes from. Datasets only decide WHICH targets a sample
names; ``SampleBuilder`` decides how they are asked and answered:

- ``segmentation``: several targets, one ``[SEG]``/``[REJ]`` slot each (GSVA's generalized
  prompt); with one existing target it may use the classic single-``[SEG]`` phrasing; a prompt
  over the token limit asks fewer targets (whole ones dropped from the end, never a slot);
- ``evaluation``: fixed questions answered with the ground truth, one conversation per query;
- ``reasoning`` (``sentence`` for one sentence query): one conversation per reasoning query,
  answered by one ``[SEG]``, optionally followed by an explanation, or by the explanation alone;
- ``dialogue``: question/answer turns without any mask (VQA, language-modelling loss only).

Training questions and answers come from the phrasing of ``SampleSettings.prompt_style``
(``gsva.text.prompts.TRAIN_PHRASINGS``).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
from transformers import PreTrainedTokenizerBase

from gsva.config import AllRejected, DataConfig, MapillaryUnlabeled, PartTargets, PromptStyle, SlotOrder
from gsva.data.bad_samples import BadSampleError
from gsva.text.prompts import (
    EVAL_SINGLE_ANSWER,
    TRAIN_PHRASINGS,
    PromptSettings,
    ReasoningAnswer,
    answer_tokens,
    format_slots,
    question_text,
)
from gsva.data.samples import ConversationSample, ImageSample
from gsva.text.conversation_tokens import TokenizedConversation, tokenize_conversation
from gsva.data.transforms import CLIP_PREPROCESSING, read_rgb, sam_resize
from gsva.text.special_tokens import IMAGE_PLACEHOLDER, REJ_TOKEN


T = TypeVar("T")


@dataclass(frozen=True)
class SampleSettings:
    """Knobs of the data path (``data.*`` in the config)."""

    sam_image_size: int = 1024
    clip_image_size: int = 224
    clip_preprocess: str = "crop"
    """``data.clip_preprocess``: ``crop`` or ``pad`` (``CLIP_PREPROCESSING``)."""
    max_tokens: int = 512
    """Tokens per conversation before the image placeholder is expanded: dialogues are cut there,
    a training segmentation prompt drops targets from its end until it fits (a slot is never cut),
    and a training prompt that does not fit even with one target is a ``BadSampleError``."""
    num_classes_per_sample: int = 5
    """At most this many targets (slots) per training prompt."""
    absent_class_rate: float = 0.0
    """Semantic segmentation: chance that a sample also names absent classes (answered ``[REJ]``)."""
    single_target_rate: float = 0.0
    """Chance that a sample with exactly one target uses the classic single-``[SEG]`` phrasing."""
    explanatory_rate: float = 0.0
    """Reasoning segmentation: chance that an answer not drawn text-only carries its explanation
    after its ``[SEG]`` (when the image has one)."""
    explanatory_text_only_rate: float = 0.0
    """Reasoning segmentation: chance that an image with an explanation is answered by the
    explanation alone (no slot, no mask)."""
    reason_seg_queries: int = 1
    """Reasoning segmentation: at most this many queries of an image per sample, one conversation each."""
    prompt_style: PromptStyle = "gsva"
    """Training phrasing (``gsva.text.prompts.TRAIN_PHRASINGS``)."""
    slot_order: SlotOrder = "shuffled"
    """``listed``: a sample of fewer candidates than it may ask keeps their listed order."""
    all_rejected: AllRejected = "swap_one"
    """Referring segmentation: a draw of only no-target expressions gets one of them swapped for an
    expression with a target (``swap_one``), or is drawn again (``redraw``, ``RedrawSample``)."""
    part_targets: PartTargets = "class"
    """PACO-LVIS and PASCAL-Part: a target is a class (its instances' union) or one instance."""
    mapillary_unlabeled: MapillaryUnlabeled = "ignore"
    """Mapillary's "unlabeled" label: never a target, or a class like any other."""

    @classmethod
    def from_config(cls, data: DataConfig) -> "SampleSettings":
        """The settings of a config's ``data`` section."""
        queries = data.reason_seg_queries_per_image
        return cls(
            sam_image_size=data.sam_image_size,
            clip_image_size=data.clip_image_size,
            clip_preprocess=data.clip_preprocess,
            max_tokens=data.model_max_length,
            num_classes_per_sample=data.num_classes_per_sample,
            absent_class_rate=data.absent_class_rate,
            single_target_rate=data.single_target_rate,
            explanatory_rate=data.explanatory_rate,
            explanatory_text_only_rate=data.explanatory_text_only_rate,
            reason_seg_queries=data.num_classes_per_sample if queries is None else queries,
            prompt_style=data.prompt_style,
            slot_order=data.slot_order,
            all_rejected=data.all_rejected,
            part_targets=data.part_targets,
            mapillary_unlabeled=data.mapillary_unlabeled,
        )

    def draw_targets(self, candidates: Sequence[T], limit: int, rng: random.Random) -> list[T]:
        """``limit`` of ``candidates`` (all when there are fewer) drawn without replacement in a
        random order; with ``slot_order`` ``listed``, fewer candidates than ``limit`` keep their
        order (the authors' released code draws only when there are at least ``limit``)."""
        if self.slot_order == "listed" and len(candidates) < limit:
            return list(candidates)
        return rng.sample(list(candidates), min(limit, len(candidates)))


PER_TARGET_METADATA = ("kinds", "keys", "ann_ids", "class_ids")
"""Sample metadata lists with one entry per target, in target order: a training prompt keeps
them in step with the targets it asks (absent ones without ``[REJ]``, those dropped to fit)."""


@dataclass(frozen=True)
class SlotTarget:
    """One answer slot: the text naming the target and its mask (all False when absent)."""

    text: str
    mask: np.ndarray
    """(H, W) bool at the original image size."""
    exists: bool


@dataclass(frozen=True)
class EvalQuery:
    """One evaluation conversation: its targets, its question template and what the records of
    its slots carry (``kinds``, ``keys``, ...)."""

    targets: list[SlotTarget]
    question: str
    metadata: dict[str, Any]


class SampleBuilder:
    """Phrases, tokenises and packs samples for one tokenizer and prompt style."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, prompts: PromptSettings, settings: SampleSettings) -> None:
        self.tokenizer = tokenizer
        self.prompts = prompts
        self.settings = settings
        self.phrasing = TRAIN_PHRASINGS[settings.prompt_style]
        self._seg_ids = frozenset(tokenizer.convert_tokens_to_ids(prompts.seg_tokens))
        rej_id = tokenizer.convert_tokens_to_ids(REJ_TOKEN) if prompts.use_rej_token else None
        self._slot_ids = self._seg_ids | ({rej_id} if rej_id is not None else set())

    def with_prompts(self, **changes: Any) -> "SampleBuilder":
        """The same builder with some prompt settings changed (e.g. ``eval_question``)."""
        return SampleBuilder(self.tokenizer, replace(self.prompts, **changes), self.settings)

    @property
    def pad_token_id(self) -> int:
        return self.tokenizer.pad_token_id

    def read_image(
        self, path: Path | str, expected_size: tuple[int, int] | None = None, size_source: str = "its annotations"
    ) -> np.ndarray:
        """(H, W, 3) uint8 RGB; ``expected_size`` (H, W), read from ``size_source``, is checked
        (``BadSampleError`` when it differs, or when the file is missing or cannot be decoded)."""
        image = read_rgb(str(path))
        if expected_size is not None and image.shape[:2] != tuple(expected_size):
            raise BadSampleError(
                path,
                f"the image is {image.shape[1]}x{image.shape[0]} (width x height) but {size_source} "
                f"say {expected_size[1]}x{expected_size[0]}",
                "image size",
            )
        return image

    # ----------------------------------------------------------------- sample kinds
    def segmentation(
        self,
        image: np.ndarray,
        targets: list[SlotTarget],
        rng: random.Random,
        metadata: dict[str, Any],
        task: str = "refer_seg",
    ) -> ImageSample:
        """A training conversation with a slot per target, phrased at random (absent targets are
        left out without ``[REJ]``); ``task`` (of the training mixture) may change how the answer
        joins its slots. A prompt over ``max_tokens`` asks fewer targets: whole ones are dropped
        from the end, never a slot, and ``metadata["dropped_expressions"]`` counts them; one that
        does not fit even with its first target is a ``BadSampleError``."""
        asked = [index for index, target in enumerate(targets) if target.exists or self.prompts.use_rej_token]
        candidates = [targets[index] for index in asked]
        if not candidates:
            raise ValueError(f"sample {metadata}: no target to ask (absent targets are left out without [REJ])")
        if len(candidates) == 1 and candidates[0].exists and rng.random() < self.settings.single_target_rate:
            phrasing = self.phrasing
            question = rng.choice(phrasing.single_questions).format(obj=phrasing.asked(candidates[0].text))
            answer = rng.choice(phrasing.single_answers).format(slot=self.prompts.slot_tokens(1)[0])
            question = self._with_image(question)
            count, tokens = 1, self._tokenize([(question, answer)], "error", metadata)
        else:
            turns = self._multi_target_turns(candidates, rng, task)
            count, tokens = self._fit_targets(len(candidates), turns, metadata)
        kept = candidates[:count]
        conversation_metadata = {
            **metadata,
            **_per_target_metadata(metadata, asked[:count], len(targets)),
            "expressions": [target.text for target in kept],
            "dropped_expressions": len(candidates) - count,
        }
        conversation = self._conversation(tokens, kept, conversation_metadata)
        return self._image_sample(image, [conversation])

    def evaluation(self, image: np.ndarray, queries: list[EvalQuery]) -> ImageSample:
        """One conversation per query, answered with the ground-truth slots (teacher forcing reads
        the decisions off them; generation cuts the answer off). A question template with
        ``{objs}`` names every target with one slot each; one with ``{obj}`` or ``{sentence}``
        asks for a single target, answered "Sure, [SEG]." (or ``[REJ]``). Prompts are never cut."""
        conversations = []
        for query in queries:
            tokens = self._tokenize([self.evaluation_turn(query)], "keep", query.metadata)
            texts = [self.prompts.eval_expression(target.text) for target in query.targets]
            conversations.append(self._conversation(tokens, query.targets, {**query.metadata, "expressions": texts}))
        return self._image_sample(image, conversations)

    def evaluation_turn(self, query: EvalQuery) -> tuple[str, str]:
        """The (question, answer) of ``query`` as ``evaluation`` asks it: the answer gives each
        target its slot, ``[SEG]`` when the target exists (or without ``[REJ]``), else ``[REJ]``."""
        texts = [self.prompts.eval_expression(target.text) for target in query.targets]
        answered = [target.exists or not self.prompts.use_rej_token for target in query.targets]
        slot_tokens = self.prompts.slot_tokens(len(texts))
        if "{objs}" in query.question:
            question = question_text(texts, query.question, self.prompts.image_marker)
            slots = format_slots(texts, answered, slot_tokens, self.prompts.slot_separator)
            return question, self.prompts.eval_answer.format(slots=slots)
        if len(texts) != 1:
            raise ValueError(f"question {query.question!r} asks for one target, got {len(texts)}")
        question = self._with_image(query.question.format(obj=texts[0], sentence=texts[0]))
        return question, EVAL_SINGLE_ANSWER.format(slot=slot_tokens[0] if answered[0] else REJ_TOKEN)

    def evaluation_length(self, query: EvalQuery) -> int:
        """Tokens of the conversation ``evaluation`` builds for ``query`` (before the image
        placeholder is expanded), to compare with ``settings.max_tokens``."""
        return len(self._tokenize([self.evaluation_turn(query)], "keep", query.metadata).input_ids)

    def fit_evaluation_query(self, query: EvalQuery) -> EvalQuery:
        """``query`` with as many of its targets, from the first, as fit in ``settings.max_tokens``
        (whole targets dropped from the end, as a training prompt is shortened); ``ValueError``
        when not even the first target fits, or when there is none."""
        if not query.targets:
            raise ValueError("the query names no target")
        fits, too_long = 0, len(query.targets) + 1
        while too_long - fits > 1:  # the prompt grows with each target: bisect the longest prefix that fits
            middle = (fits + too_long) // 2
            if self.evaluation_length(replace(query, targets=query.targets[:middle])) <= self.settings.max_tokens:
                fits = middle
            else:
                too_long = middle
        if fits == 0:
            length = self.evaluation_length(replace(query, targets=query.targets[:1]))
            raise ValueError(
                f"the prompt takes {length} tokens with its first target alone, more than the limit of "
                f"{self.settings.max_tokens} (data.model_max_length): shorten it"
            )
        return replace(query, targets=query.targets[:fits])

    def sentence(
        self,
        image: np.ndarray,
        text: str,
        mask: np.ndarray,
        rng: random.Random,
        explanation: str | None,
        metadata: dict[str, Any],
    ) -> ImageSample:
        """One sentence query answered with one ``[SEG]`` (+ ``explanation`` when given)."""
        answer: ReasoningAnswer = "mask" if explanation is None else "explained"
        return self.reasoning(image, [text], True, mask, rng, answer, explanation, metadata)

    def reasoning(
        self,
        image: np.ndarray,
        queries: list[str],
        is_sentence: bool,
        mask: np.ndarray,
        rng: random.Random,
        answer: ReasoningAnswer,
        explanation: str | None,
        metadata: dict[str, Any],
    ) -> ImageSample:
        """One conversation per reasoning query (whole sentences, or short phrases asked with the
        single-target questions), all about the same target ``mask``, each answered as ``answer``
        says: ``[SEG]``, ``[SEG]`` and ``explanation``, or ``explanation`` alone (no slot; such a
        conversation is cut at ``max_tokens`` like a dialogue)."""
        if answer != "mask" and explanation is None:
            raise ValueError(f"sample {metadata}: a {answer!r} answer needs the image's explanation")
        conversations = []
        for query in queries:
            turn = self._reasoning_turn(query, is_sentence, rng, answer, explanation)
            if answer == "text_only":
                tokens = self._tokenize([turn], "cut", metadata)
                conversations.append(self._text_conversation(tokens, image, {**metadata, "kinds": []}))
            else:
                tokens = self._tokenize([turn], "error", metadata)
                target = SlotTarget(query, mask, True)
                conversations.append(self._conversation(tokens, [target], {**metadata, "expressions": [query]}))
        return self._image_sample(image, conversations)

    def dialogue(self, image: np.ndarray, turns: list[tuple[str, str]], metadata: dict[str, Any]) -> ImageSample:
        """(question, answer) turns; the first question already holds the image placeholder, written
        here as the model writes its image (``PromptSettings.image_marker``)."""
        first, answer = turns[0]
        turns = [(first.replace(IMAGE_PLACEHOLDER, self.prompts.image_marker, 1), answer), *turns[1:]]
        tokens = self._tokenize(turns, "cut", metadata)
        return self._image_sample(image, [self._text_conversation(tokens, image, metadata)])

    # ----------------------------------------------------------------- shared steps
    def _with_image(self, question: str) -> str:
        return f"{self.prompts.image_marker}\n{question}"

    def _multi_target_turns(
        self, targets: list[SlotTarget], rng: random.Random, task: str
    ) -> Callable[[int], tuple[str, str]]:
        """The (question, answer) asking the first n of ``targets``, for any n, in a question and
        answer form drawn from the training phrasing."""
        question, answer = self.phrasing.draw(rng)
        joiner = self.phrasing.slot_joiner(task)

        def turn(count: int) -> tuple[str, str]:
            asked = targets[:count]
            tokens = answer_tokens([target.exists for target in asked], self.prompts.slot_tokens(count))
            texts = [target.text for target in asked]
            return self.phrasing.multi_target_turn(texts, tokens, question, answer, joiner, self.prompts.image_marker)

        return turn

    def _reasoning_turn(
        self, query: str, is_sentence: bool, rng: random.Random, answer: ReasoningAnswer, explanation: str | None
    ) -> tuple[str, str]:
        """(question, answer) of one reasoning query (see ``reasoning``)."""
        if answer == "text_only":
            return self._with_image(query), str(explanation)
        phrasing = self.phrasing
        if is_sentence:
            question = rng.choice(phrasing.sentence_questions).format(sentence=query)
        else:
            question = rng.choice(phrasing.single_questions).format(obj=phrasing.query(query))
        reply = rng.choice(phrasing.single_answers).format(slot=self.prompts.slot_tokens(1)[0])
        if answer == "explained":
            question = f"{query} {rng.choice(phrasing.explain_requests)}"
            reply = f"{reply} {explanation}"
        return self._with_image(question), reply

    def _fit_targets(
        self, available: int, turn: Callable[[int], tuple[str, str]], metadata: dict[str, Any]
    ) -> tuple[int, TokenizedConversation]:
        """The largest n <= ``available`` whose (question, answer) ``turn(n)`` fits in
        ``max_tokens``, and that prompt's tokens; ``BadSampleError`` if not even n = 1 fits."""
        for count in range(available, 0, -1):
            tokens = self._tokenize([turn(count)], "keep", metadata)
            if len(tokens.input_ids) <= self.settings.max_tokens:
                return count, tokens
        raise self._prompt_too_long(tokens, metadata)

    def _prompt_too_long(self, tokens: TokenizedConversation, metadata: dict[str, Any]) -> BadSampleError:
        """The error of a single-target training prompt (``tokens``) over ``max_tokens``."""
        return BadSampleError(
            _source(metadata),
            f"the training prompt takes {len(tokens.input_ids)} tokens with a single target, more than "
            f"data.model_max_length={self.settings.max_tokens} (a target's slot is never cut); raise "
            "data.model_max_length or shorten the expression",
            "prompt length",
        )

    def _tokenize(
        self, turns: list[tuple[str, str]], overflow: Literal["cut", "error", "keep"], metadata: dict[str, Any]
    ) -> TokenizedConversation:
        """Tokenise; beyond ``max_tokens`` a dialogue is cut, a single-target training prompt is a
        ``BadSampleError``, and an evaluation prompt is kept whole (every expression of the image
        must be asked)."""
        tokens = tokenize_conversation(self.prompts.template.render(turns), self.tokenizer)
        limit = self.settings.max_tokens
        if len(tokens.input_ids) <= limit or overflow == "keep":
            return tokens
        if overflow == "error":
            raise self._prompt_too_long(tokens, metadata)
        return TokenizedConversation(input_ids=tokens.input_ids[:limit], labels=tokens.labels[:limit])

    def _conversation(
        self, tokens: TokenizedConversation, targets: list[SlotTarget], metadata: dict[str, Any]
    ) -> ConversationSample:
        """Pair the answer's slot tokens, in order, with ``targets`` (one slot token per target)."""
        slot_positions = [position for position, token in enumerate(tokens.input_ids) if token in self._slot_ids]
        if len(slot_positions) != len(targets):
            raise ValueError(
                f"sample {metadata}: the conversation holds {len(slot_positions)} slot tokens for "
                f"{len(targets)} targets (does an expression contain a slot token such as [SEG] literally?)"
            )
        return ConversationSample(
            input_ids=tokens.input_ids,
            labels=tokens.labels,
            target_masks=np.stack([target.mask for target in targets]).astype(np.uint8),
            slot_exists=[target.exists for target in targets],
            metadata=metadata,
            slot_positions=slot_positions,
            slot_is_seg=[tokens.input_ids[position] in self._seg_ids for position in slot_positions],
        )

    def _text_conversation(
        self, tokens: TokenizedConversation, image: np.ndarray, metadata: dict[str, Any]
    ) -> ConversationSample:
        """A conversation without any slot (language-modelling loss only)."""
        height, width = image.shape[:2]
        return ConversationSample(
            input_ids=tokens.input_ids,
            labels=tokens.labels,
            target_masks=np.zeros((0, height, width), dtype=np.uint8),
            slot_exists=[],
            metadata={**metadata, "expressions": []},
        )

    def _image_sample(self, image: np.ndarray, conversations: list[ConversationSample]) -> ImageSample:
        sam_image = sam_resize(image, self.settings.sam_image_size)
        return ImageSample(
            sam_image=sam_image,
            clip_image=CLIP_PREPROCESSING[self.settings.clip_preprocess](image, self.settings.clip_image_size),
            original_size=(image.shape[0], image.shape[1]),
            resized_size=(sam_image.shape[1], sam_image.shape[2]),
            conversations=conversations,
        )


def _per_target_metadata(metadata: dict[str, Any], indices: list[int], num_targets: int) -> dict[str, Any]:
    """The lists of :data:`PER_TARGET_METADATA` in ``metadata`` cut to the targets at ``indices``."""
    selected = {}
    for key in PER_TARGET_METADATA:
        if key in metadata:
            if len(metadata[key]) != num_targets:
                raise ValueError(
                    f"sample metadata {key!r} holds {len(metadata[key])} entries for {num_targets} targets"
                )
            selected[key] = [metadata[key][index] for index in indices]
    return selected


def _source(metadata: dict[str, Any]) -> str:
    """What an error names as a sample's source: its image file, else its metadata."""
    return str(metadata.get("image_path") or f"sample {metadata}")
