"""Referring segmentation samples (RefCOCO/+/g, RefCLEF, gRefCOCO, Ref-ZOM) with GSVA prompts.

Training (``sample``): one image, up to ``num_classes_per_sample`` of its expressions drawn at
random, at least one with a target (all-absent samples are never produced), random phrasing. A
draw of only no-target expressions (``data.all_rejected``) gets one of them swapped for an
expression of the image that has a target (``swap_one``; images without any are not training
items), or raises ``RedrawSample`` for the stream to draw again (``redraw``, as the authors'
released code; every image with expressions is an item).
Evaluation (``__getitem__``): every expression of the image, answered with the ground-truth
slots (teacher forcing reads the decisions off them; generation cuts the answer off), asked in
one of three ways:

- ``gsva`` (the paper): one conversation naming ALL the image's expressions, with the evaluation
  question of the prompt settings (``--question-template``);
- ``gsva`` with ``one_per_prompt``: the same question, one conversation per expression;
- ``lisa``: one conversation per expression with the classic single-target question
  ("What is {obj} in this image? Please output the segmentation mask." -> "Sure, [SEG].").
"""

from __future__ import annotations

import random
from typing import Any, Literal

import numpy as np
from torch.utils.data import Dataset

from gsva.data.mixture import RedrawSample
from gsva.data.refer_seg.reader import ReferIndex, ReferringExpression
from gsva.text.prompts import EVAL_SINGLE_QUESTIONS
from gsva.data.sample_builder import EvalQuery, SampleBuilder, SlotTarget
from gsva.data.samples import ImageSample


PROMPT_STYLES = ("gsva", "lisa")


class ReferSegDataset(Dataset):
    """Items are the images of ``split`` that have expressions (for training with
    ``all_rejected="swap_one"``: an expression with a target)."""

    task = "refer_seg"

    def __init__(
        self,
        index: ReferIndex,
        split: str,
        builder: SampleBuilder,
        train: bool,
        prompt_style: Literal["gsva", "lisa"] = "gsva",
        one_per_prompt: bool = False,
    ) -> None:
        if prompt_style not in PROMPT_STYLES:
            raise ValueError(f"unknown prompt style {prompt_style!r}; expected one of {PROMPT_STYLES}")
        self.prompt_style = prompt_style
        self.one_per_prompt = one_per_prompt or prompt_style == "lisa"
        self.index = index
        self.split = split
        self.builder = builder
        self.name = index.dataset
        image_ids = index.image_ids(split)
        if train and builder.settings.all_rejected == "swap_one":
            image_ids = [i for i in image_ids if any(not e.no_target for e in index.expressions(i, split))]
        self.image_ids = image_ids

    def __len__(self) -> int:
        return len(self.image_ids)

    def sample(self, item: int, rng: random.Random) -> ImageSample:
        """A training sample of image ``item`` drawn with ``rng``."""
        expressions = self.index.expressions(self.image_ids[item], self.split)
        settings = self.builder.settings
        chosen = settings.draw_targets(expressions, settings.num_classes_per_sample, rng)
        if all(e.no_target for e in chosen):
            if settings.all_rejected == "redraw":
                raise RedrawSample(f"{self.name} image {self.image_ids[item]}: every expression drawn has no target")
            chosen[rng.randrange(len(chosen))] = rng.choice([e for e in expressions if not e.no_target])
        return self._build(item, chosen, rng)

    def length_hint(self, item: int) -> float:
        """Expected characters of the expressions that ``sample`` names for image ``item``: the
        number it draws times the mean length of the image's expressions (no image is read)."""
        expressions = self.index.expressions(self.image_ids[item], self.split)
        return self._sample_size(expressions) * sum(len(e.text) for e in expressions) / len(expressions)

    def _sample_size(self, expressions: list[ReferringExpression]) -> int:
        """How many of ``expressions`` a training sample names."""
        return min(self.builder.settings.num_classes_per_sample, len(expressions))

    def __getitem__(self, item: int) -> ImageSample:
        """The evaluation sample of image ``item``: every expression, fixed question(s)."""
        image_id = self.image_ids[item]
        image = self._read_image(image_id)
        expressions = self.index.expressions(image_id, self.split)
        groups = [[e] for e in expressions] if self.one_per_prompt else [expressions]
        question = EVAL_SINGLE_QUESTIONS["lisa"] if self.prompt_style == "lisa" else self.builder.prompts.eval_question
        queries = [
            EvalQuery(self._targets(image_id, group), question, self._metadata(item, group))
            for group in groups
        ]
        return self.builder.evaluation(image, queries)

    def objects_mask(self, image_id: int) -> np.ndarray:
        """(H, W) bool union of every annotated object of the image (the always-[SEG] baseline)."""
        return self.index.target_mask(image_id, self.index.annotation_ids(image_id))

    def _build(self, item: int, expressions: list[ReferringExpression], rng: random.Random) -> ImageSample:
        image_id = self.image_ids[item]
        image = self._read_image(image_id)
        targets, metadata = self._targets(image_id, expressions), self._metadata(item, expressions)
        return self.builder.segmentation(image, targets, rng, metadata, self.task)

    def _read_image(self, image_id: int) -> np.ndarray:
        record = self.index.image(image_id)
        size_source = f"{self.index.instances_file} image id {image_id} ('width', 'height')"
        return self.builder.read_image(self.index.image_path(image_id), (record.height, record.width), size_source)

    def _targets(self, image_id: int, expressions: list[ReferringExpression]) -> list[SlotTarget]:
        return [
            SlotTarget(text=e.text, mask=self.index.target_mask(image_id, e.ann_ids), exists=not e.no_target)
            for e in expressions
        ]

    def _metadata(self, item: int, expressions: list[ReferringExpression]) -> dict[str, Any]:
        image_id = self.image_ids[item]
        return {
            "dataset": self.name,
            "item": item,
            "image_id": image_id,
            "image_path": str(self.index.image_path(image_id)),
            "kinds": [e.kind for e in expressions],
            "keys": [e.sent_id for e in expressions],
            "ann_ids": [list(e.ann_ids) for e in expressions],
        }
