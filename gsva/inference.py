"""Segment what a text names in user images with a saved GSVA model: the one code path of
``scripts/infer.py`` and of the demo page (``gsva.demo.page``) for loading, prompts and masks.

    segmenter = Segmenter.load("runs/tiny_synthetic/final", default_device())
    image = segmenter.read_image("shapes.png")
    query = segmenter.fit(expressions_query(["red", "blue shapes"], "please", image.shape[:2]))
    prediction = segmenter.predict([image], [query], "generate", max_new_tokens=64)[0]
    files = write_prediction(Path("out"), image, query, prediction)

A prompt is built like an evaluation sample (``SampleBuilder.evaluation``) whose targets are
placeholders (exists=True, empty masks): no ground truth is known or used. Its answer therefore
marks every slot ``[SEG]``. The two protocols read it differently:

- ``generate``: the answer is cut off and the model writes its own, greedily, with the KV cache of
  the decoder's ``generate`` (``GsvaModel.generate``); each generated ``[SEG]`` gets a mask.
- ``teacher-forced``: the paper's protocol (``GsvaModel.predict_teacher_forced``) on that
  placeholder answer. A slot's decision is the model's own most likely token at the slot, after
  the fixed answer up to it (``[SEG]``; anything else counts as ``[REJ]``), read in one forward
  pass; every earlier slot reads ``[SEG]`` there, whatever the model decided for it. Every slot's
  mask comes from a second pass in which all slots are ``[SEG]``. No text is generated: the
  answer reported is the evaluation answer with each slot set to its decision.

Models run in bf16 on a GPU and in fp32 on the CPU.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np
import torch

from gsva.text.prompts import EVAL_SINGLE_QUESTIONS, resolve_eval_question
from gsva.data.sample_builder import EvalQuery, SampleBuilder, SlotTarget
from gsva.data.samples import Collator
from gsva.evaluation.overlays import render_prediction, save_overlay
from gsva.model.gsva import PROTOCOLS, SlotPredictions
from gsva.pipeline import Pipeline, from_pretrained
from gsva.text.special_tokens import IM_END_TOKEN, IM_START_TOKEN, IMAGE_PLACEHOLDER, REJ_TOKEN

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
"""Image files that ``Segmenter.read_image`` decodes (OpenCV)."""


class QueryError(ValueError):
    """A query the model cannot be asked; the message says what to change."""


def default_device() -> torch.device:
    """The first GPU when there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def split_expressions(text: str) -> list[str]:
    """Referring expressions written one per line or separated by commas; blank ones dropped."""
    return [part.strip() for part in re.split(r"[,\n]", text) if part.strip()]


def _placeholder_targets(texts: list[str], size: tuple[int, int]) -> list[SlotTarget]:
    """One target per text, marked present with an empty (H, W) mask: it only shapes the answer
    that ends the prompt (no ground truth)."""
    empty = np.zeros(size, dtype=bool)
    return [SlotTarget(text, empty, True) for text in texts]


def expressions_query(texts: list[str], question_template: str, size: tuple[int, int]) -> EvalQuery:
    """One GSVA prompt naming every expression ("Please segment a, b, c in this image."), for an
    image of ``size`` (H, W); ``question_template`` is a name of ``EVAL_QUESTIONS`` or a template
    containing ``{objs}``."""
    if not texts:
        raise QueryError("no referring expression given: write one per line or separate them with commas")
    try:
        question = resolve_eval_question(question_template)
    except ValueError as error:
        raise QueryError(str(error)) from error
    return EvalQuery(targets=_placeholder_targets(texts, size), question=question, metadata={})


def reasoning_query(text: str, size: tuple[int, int]) -> EvalQuery:
    """One free-text (reasoning) query answered with one mask ("<text> Please output the
    segmentation mask."), for an image of ``size`` (H, W)."""
    if not text.strip():
        raise QueryError("no question given: write what to segment")
    return EvalQuery(targets=_placeholder_targets([text.strip()], size), question=EVAL_SINGLE_QUESTIONS["sentence"], metadata={})


def limit_image_side(image: np.ndarray, max_side: int) -> np.ndarray:
    """(H, W, 3) uint8 -> the same image, shrunk (area interpolation, aspect kept) so that its
    longer side is at most ``max_side``; returned as is when it already is."""
    height, width = image.shape[:2]
    if max(height, width) <= max_side:
        return image
    scale = max_side / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


@dataclass(frozen=True)
class FittedQuery:
    query: EvalQuery
    """What is asked: the expressions that fit in the prompt limit."""
    note: str | None
    """Says how many expressions were left out, when some were."""


@dataclass
class Segmenter:
    """A loaded model with the sample builder and collator of its config."""

    pipeline: Pipeline
    collate: Collator
    device: torch.device

    @classmethod
    def load(cls, weights: str | Path, device: torch.device, overrides: list[str] | tuple[str, ...] = ()) -> "Segmenter":
        """Load a model directory (or its ``model.safetensors``) with ``from_pretrained``: bf16
        on a GPU, fp32 on the CPU; ``overrides`` are dotted config overrides."""
        precision = "bf16" if device.type == "cuda" else "fp32"
        pipeline = from_pretrained(weights, [f"model.precision={precision}", *overrides], device=device)
        return cls(pipeline, Collator(pipeline.builder.pad_token_id, pipeline.cfg.data.sam_image_size), device)

    @property
    def builder(self) -> SampleBuilder:
        return self.pipeline.builder

    @property
    def max_prompt_tokens(self) -> int:
        """The prompt limit (``data.model_max_length``), in tokens before the image is spliced in."""
        return self.builder.settings.max_tokens

    def read_image(self, path: str | Path) -> np.ndarray:
        """(H, W, 3) uint8 RGB; ``BadSampleError`` when the file is missing or cannot be decoded."""
        return self.builder.read_image(path)

    def ask(self, text: str, reasoning: bool, question_template: str, size: tuple[int, int]) -> "FittedQuery":
        """The query of ``text`` about an image of ``size`` (H, W): one reasoning question, or
        referring expressions (one per line or comma-separated) asked with ``question_template``,
        cut to the prompt limit (``QueryError`` when it cannot be asked)."""
        if reasoning:
            query = reasoning_query(text, size)
        else:
            query = expressions_query(split_expressions(text), question_template, size)
        fitted = self.fit(query)
        dropped = len(query.targets) - len(fitted.targets)
        note = None
        if dropped:
            note = (f"the prompt limit of {self.max_prompt_tokens} tokens (data.model_max_length) keeps the first "
                    f"{len(fitted.targets)} of {len(query.targets)} expressions; the other {dropped} are not asked")
        return FittedQuery(fitted, note)

    def fit(self, query: EvalQuery) -> EvalQuery:
        """``query`` with as many of its expressions, from the first, as the prompt limit allows
        (``QueryError`` when an expression holds a reserved token or not even one fits)."""
        reserved = [*self.builder.prompts.seg_tokens, REJ_TOKEN, IMAGE_PLACEHOLDER, IM_START_TOKEN, IM_END_TOKEN]
        for target in query.targets:
            for token in reserved:
                if token in target.text:
                    raise QueryError(f"{target.text!r} contains {token}, a token the model reserves: remove it")
        try:
            return self.builder.fit_evaluation_query(query)
        except ValueError as error:
            raise QueryError(str(error)) from error

    def predict(
        self, images: list[np.ndarray], queries: list[EvalQuery], protocol: str, max_new_tokens: int
    ) -> list[SlotPredictions]:
        """One query per (H, W, 3) uint8 image -> its predictions (masks (T, H, W) bool at the
        image size), with ``protocol`` ``generate`` or ``teacher-forced`` (see the module)."""
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol {protocol!r}: expected one of {PROTOCOLS}")
        batch = self.collate([self.builder.evaluation(image, [query]) for image, query in zip(images, queries)])
        predictions = self.pipeline.model.predict(batch.to(self.device), protocol, max_new_tokens, self.pipeline.tokenizer)
        if protocol == "generate":
            return predictions
        return [
            replace(prediction, text=self._decided_answer(query, prediction.rejected))
            for query, prediction in zip(queries, predictions)
        ]

    def _decided_answer(self, query: EvalQuery, rejected: list[bool]) -> str:
        """The evaluation answer of ``query`` with each slot set to its decision."""
        targets = [replace(target, exists=not is_rejected) for target, is_rejected in zip(query.targets, rejected)]
        return self.builder.evaluation_turn(replace(query, targets=targets))[1]


def answer_line(prediction: SlotPredictions) -> str:
    """The answer text of ``prediction`` on one line."""
    return prediction.text.replace("\n", " ").strip()


def parse_failure_note(prediction: SlotPredictions) -> str | None:
    """Says that a generated answer did not give each expression one slot, when it did not."""
    if not prediction.parse_failures:
        return None
    return (f"the answer has {prediction.parse_failures} slot(s) more or fewer than expressions; "
            "an expression without its slot counts as [REJ]")


def slug(text: str) -> str:
    """A file-name-safe form of ``text`` (at most 48 characters)."""
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")[:48] or "expression"


def mask_image(mask: torch.Tensor, rejected: bool) -> np.ndarray:
    """(H, W) bool mask -> (H, W) uint8 image: 255 on the mask, 0 elsewhere, all 0 when rejected."""
    return np.where(mask.numpy() & (not rejected), 255, 0).astype(np.uint8)


@dataclass(frozen=True)
class PredictionFiles:
    masks: list[Path]
    """One PNG per expression, in query order."""
    overlay: Path


def write_prediction(out: Path, image: np.ndarray, query: EvalQuery, prediction: SlotPredictions) -> PredictionFiles:
    """Write ``out/mask_<index>_<expression>.png`` per expression (0/255 at the image size, all 0
    when rejected) and ``out/overlay.png`` (the image with each mask in its expression's colour,
    the answer and the decisions)."""
    out.mkdir(parents=True, exist_ok=True)
    expressions = [target.text for target in query.targets]
    masks = []
    for index, (text, rejected, mask) in enumerate(zip(expressions, prediction.rejected, prediction.masks)):
        file = out / f"mask_{index:02d}_{slug(text)}.png"
        if not cv2.imwrite(str(file), mask_image(mask, rejected)):
            raise OSError(f"could not write {file}")
        masks.append(file)
    panel = render_prediction(image, expressions, list(prediction.masks.numpy()), prediction.rejected, answer_line(prediction))
    save_overlay(out / "overlay.png", panel)
    return PredictionFiles(masks=masks, overlay=out / "overlay.png")
