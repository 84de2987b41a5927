"""Visual question answering samples (LLaVA-Instruct-150K): language-modelling loss only.

A sample is a whole multi-turn conversation about one image. It has no answer slot and no mask,
so in a mixed batch it contributes to the text loss and is invisible to the mask path.
"""

from __future__ import annotations

import random

from gsva.data.vqa.reader import LlavaInstruct
from gsva.data.sample_builder import SampleBuilder
from gsva.data.samples import ImageSample


class VqaDataset:
    """Training samples of LLaVA-Instruct conversations."""

    task = "vqa"
    name = "llava_instruct_150k"

    def __init__(self, records: LlavaInstruct, builder: SampleBuilder) -> None:
        self.records = records
        self.builder = builder

    def __len__(self) -> int:
        return len(self.records)

    def sample(self, item: int, rng: random.Random) -> ImageSample:
        """The conversation of record ``item`` (``rng`` unused: the dialogue is fixed)."""
        record = self.records[item]
        image = self.builder.read_image(record.image_path)
        metadata = {"dataset": self.name, "record_id": record.record_id, "image_path": str(record.image_path), "kinds": []}
        return self.builder.dialogue(image, record.turns, metadata)
