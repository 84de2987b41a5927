"""Referring segmentation samples (RefCOCO/+/g, RefCLEF, gRefCOCO, Ref-ZOM) with GSVA prompts.

Training (``sample``): one image, up to ``num_classes_per_sample`` of its expressions drawn at
random, at least one with a target (all-absent samples are never produced), random phrasing.
Evaluation (``__getitem__``): one conversation per image naming ALL its expressions with the
fixed evaluation question, answered with the ground-truth slots (teacher forcing needs them;
the generate protocol cuts the answer off).
"""

from __future__ import annotations

import random

from torch.utils.data import Dataset

from gsva.data.refer import ReferIndex, ReferringExpression
from gsva.data.sample_builder import SampleBuilder, SlotTarget
from gsva.data.samples import ImageSample


class ReferSegDataset(Dataset):
    """Items are the images of ``split`` that have expressions (for training: a target)."""

    task = "refer_seg"

    def __init__(self, index: ReferIndex, split: str, builder: SampleBuilder, train: bool) -> None:
        self.index = index
        self.split = split
        self.builder = builder
        self.name = index.dataset
        image_ids = index.image_ids(split)
        if train:
            image_ids = [i for i in image_ids if any(not e.no_target for e in index.expressions(i, split))]
        self.image_ids = image_ids

    def __len__(self) -> int:
        return len(self.image_ids)

    def sample(self, item: int, rng: random.Random) -> ImageSample:
        """A training sample of image ``item`` drawn with ``rng``."""
        expressions = self.index.expressions(self.image_ids[item], self.split)
        count = min(self.builder.settings.num_classes_per_sample, len(expressions))
        chosen = rng.sample(expressions, count)
        if all(e.no_target for e in chosen):
            chosen[rng.randrange(count)] = rng.choice([e for e in expressions if not e.no_target])
        return self._build(item, chosen, rng)

    def __getitem__(self, item: int) -> ImageSample:
        """The evaluation sample of image ``item``: every expression, fixed question."""
        return self._build(item, self.index.expressions(self.image_ids[item], self.split), None)

    def _build(self, item: int, expressions: list[ReferringExpression], rng: random.Random | None) -> ImageSample:
        image_id = self.image_ids[item]
        record = self.index.image(image_id)
        image_path = self.index.image_path(image_id)
        image = self.builder.read_image(image_path, (record.height, record.width))
        targets = [
            SlotTarget(text=e.text, mask=self.index.target_mask(image_id, e.ann_ids), exists=not e.no_target)
            for e in expressions
        ]
        metadata = {
            "dataset": self.name,
            "image_id": image_id,
            "image_path": str(image_path),
            "kinds": [e.kind for e in expressions],
            "ann_ids": [list(e.ann_ids) for e in expressions],
            "sent_ids": [e.sent_id for e in expressions],
        }
        return self.builder.segmentation(image, targets, rng, metadata)
