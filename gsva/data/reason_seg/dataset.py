"""Reasoning segmentation samples (ReasonSeg): queries about one target, one ``[SEG]`` each.

A sample asks up to ``reason_seg_queries`` of the image's queries
(``data.reason_seg_queries_per_image``: 1 by default, ``data.num_classes_per_sample`` in the
authors' released code), one conversation each. A query that is a whole sentence is asked as it
is. A short one (``is_sentence`` false) is asked like a referring expression (the multi-target
prompt, all of the sample's queries in one conversation) when the training phrasing says so
(``gsva``), else with the single-target questions (``gsva_release``).

An image with an explanation is answered, for all its queries, by the explanation alone at
``explanatory_text_only_rate``, else by ``[SEG]`` followed by the explanation at
``explanatory_rate`` (the question then asks for it), else by ``[SEG]``. The authors' released
code draws text-only at 0.1, then either of the other two with equal chance
(data/reason_seg_dataset.py:154-194 of the release): rates 0.1 and 0.5.
"""

from __future__ import annotations

import random
from typing import Any

from gsva.data.reason_seg.reader import ReasonSegIndex, ReasonSegItem
from gsva.text.prompts import EVAL_SINGLE_QUESTIONS, ReasoningAnswer
from gsva.data.sample_builder import EvalQuery, SampleBuilder, SlotTarget
from gsva.data.samples import ImageSample


class ReasonSegDataset:
    """Training samples of one ReasonSeg split."""

    task = "reason_seg"
    name = "reason_seg"

    def __init__(self, index: ReasonSegIndex, builder: SampleBuilder) -> None:
        self.index = index
        self.builder = builder

    def __len__(self) -> int:
        return len(self.index)

    def sample(self, item: int, rng: random.Random) -> ImageSample:
        entry = self.index[item]
        image = self.builder.read_image(entry.image_path)
        mask = self.index.read_mask(entry, image.shape[0], image.shape[1])
        settings = self.builder.settings
        queries = settings.draw_targets(entry.texts, settings.reason_seg_queries, rng)
        metadata: dict[str, Any] = {"dataset": self.name, "image_path": str(entry.image_path)}
        if not entry.is_sentence and self.builder.phrasing.short_queries_as_targets:
            targets = [SlotTarget(text=query, mask=mask, exists=True) for query in queries]
            metadata["kinds"] = ["single"] * len(targets)
            return self.builder.segmentation(image, targets, rng, metadata, self.task)
        answer = self._answer(entry, rng)
        metadata.update(kinds=["single"], explained=answer != "mask")
        return self.builder.reasoning(image, queries, entry.is_sentence, mask, rng, answer, entry.explanation, metadata)

    def _answer(self, entry: ReasonSegItem, rng: random.Random) -> ReasoningAnswer:
        """How the queries of ``entry`` are answered (see the module docstring)."""
        if entry.explanation is None:
            return "mask"
        settings = self.builder.settings
        if settings.explanatory_text_only_rate > 0 and rng.random() < settings.explanatory_text_only_rate:
            return "text_only"
        return "explained" if rng.random() < settings.explanatory_rate else "mask"


class ReasonSegEvalDataset:
    """ReasonSeg val/test: one conversation per image with its first query (as the benchmark's
    reference evaluation), answered "Sure, [SEG]."."""

    name = "reason_seg"

    def __init__(self, index: ReasonSegIndex, builder: SampleBuilder) -> None:
        self.index = index
        self.builder = builder

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, item: int) -> ImageSample:
        entry = self.index[item]
        image = self.builder.read_image(entry.image_path)
        mask = self.index.read_mask(entry, image.shape[0], image.shape[1])
        text = entry.texts[0]
        question = EVAL_SINGLE_QUESTIONS["sentence" if entry.is_sentence else "lisa"]
        metadata = {
            "dataset": self.name,
            "item": item,
            "image_id": entry.image_path.stem,
            "image_path": str(entry.image_path),
            "kinds": ["single" if mask.any() else "no-target"],
            "keys": [entry.image_path.name],
        }
        return self.builder.evaluation(image, [EvalQuery([SlotTarget(text, mask, True)], question, metadata)])
