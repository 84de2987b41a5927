"""Reasoning segmentation samples (ReasonSeg): one query, one ``[SEG]``.

A query that is a whole sentence is asked as it is; a short one (``is_sentence`` false) is asked
like any single target. At ``explanatory_rate`` a sentence query whose image has an explanation
asks for it, and the answer carries it after the ``[SEG]``.
"""

from __future__ import annotations

import random

from gsva.data.reason_seg.reader import ReasonSegIndex
from gsva.text.prompts import EVAL_SINGLE_QUESTIONS
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
        text = rng.choice(entry.texts)
        metadata = {"dataset": self.name, "image_path": str(entry.image_path), "kinds": ["single"]}
        if not entry.is_sentence:
            return self.builder.segmentation(image, [SlotTarget(text=text, mask=mask, exists=True)], rng, metadata)
        explain = entry.explanation is not None and rng.random() < self.builder.settings.explanatory_rate
        metadata["explained"] = explain
        return self.builder.sentence(image, text, mask, rng, entry.explanation if explain else None, metadata)


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
