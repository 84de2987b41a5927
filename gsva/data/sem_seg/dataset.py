"""Semantic segmentation samples (ADE20K, COCO-Stuff, Mapillary Vistas, PACO-LVIS, PASCAL-Part).

A sample names up to ``num_classes_per_sample`` classes present in the image (each supervised
with all its pixels) and, at ``absent_class_rate``, some classes of the dataset that are surely not in
the image, answered ``[REJ]``. Present and absent classes are phrased from the same class list,
so the wording never gives the answer away. Ignore labels never become targets.

With ``part_targets="instance"`` a target of a COCO-json source (PACO-LVIS, PASCAL-Part) is one
annotated instance, named by its class, rather than its class's union: several targets may then
share a name, as in the authors' released code (data/sem_seg_dataset.py:240-261 and 347-357 of the
release), whose [REJ] targets come only from the data (``absent_class_rate`` 0).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from functools import partial

import numpy as np

from gsva.text.prompts import EVAL_SINGLE_QUESTIONS
from gsva.data.sample_builder import EvalQuery, SampleBuilder, SlotTarget
from gsva.data.samples import ImageSample
from gsva.data.sem_seg.reader import ClassName, SemSegSource, SemSegTargets, phrase_class

MAX_DRAWS_FOR_LABELLED_IMAGE = 20


class SemSegDataset:
    """Training samples of one semantic segmentation source."""

    task = "sem_seg"

    def __init__(self, source: SemSegSource, builder: SampleBuilder) -> None:
        self.source = source
        self.builder = builder
        self.name = source.name

    def __len__(self) -> int:
        return len(self.source)

    def sample(self, item: int, rng: random.Random) -> ImageSample:
        """A sample of image ``item``; an image without any labelled class (all ignore) is
        replaced by another image drawn with ``rng`` (it has nothing to ask about)."""
        for _ in range(MAX_DRAWS_FOR_LABELLED_IMAGE):
            targets = self.source.read_targets(item)
            if targets.class_ids:
                break
            item = rng.randrange(len(self.source))
        else:
            raise ValueError(
                f"{self.name}: {MAX_DRAWS_FOR_LABELLED_IMAGE} images in a row had no labelled class; "
                "check the label files (python scripts/check_data.py)"
            )
        settings = self.builder.settings
        limit = settings.num_classes_per_sample
        num_absent = 0
        if rng.random() < settings.absent_class_rate:
            num_absent = rng.randint(1, max(1, limit // 2))
        present = settings.draw_targets(self._present_units(targets), max(1, limit - num_absent), rng)
        num_present = len(present)
        candidates = self._absent_candidates(targets)
        absent = rng.sample(candidates, min(num_absent, len(candidates), limit - num_present))
        empty = partial(np.zeros, (targets.height, targets.width), dtype=bool)
        slots = [(class_id, mask, True) for class_id, mask in present]
        slots += [(class_id, empty, False) for class_id in absent]
        if absent or settings.slot_order == "shuffled":
            rng.shuffle(slots)
        names, keep_underscores = self.source.class_names, self.builder.phrasing.release_text
        slot_targets = [
            SlotTarget(text=phrase_class(names[class_id], rng, keep_underscores), mask=mask(), exists=exists)
            for class_id, mask, exists in slots
        ]
        image_path = self.source.image_path(item)
        image = self.builder.read_image(image_path, (targets.height, targets.width))
        metadata = {
            "dataset": self.name,
            "image_path": str(image_path),
            "class_ids": [class_id for class_id, _, _ in slots],
            "kinds": ["single" if target.exists else "no-target" for target in slot_targets],
        }
        return self.builder.segmentation(image, slot_targets, rng, metadata, self.task)

    def _present_units(self, targets: SemSegTargets) -> list[tuple[int, Callable[[], np.ndarray]]]:
        """(class id, its mask builder) of each target the image offers: its present classes, or
        its instances when ``part_targets`` is ``instance`` and the source has instances."""
        if self.builder.settings.part_targets == "instance" and targets.instance_class_ids:
            return [
                (class_id, partial(targets.instance_mask, index))
                for index, class_id in enumerate(targets.instance_class_ids)
            ]
        return [(class_id, partial(targets.mask, class_id)) for class_id in targets.class_ids]

    def _absent_candidates(self, targets: SemSegTargets) -> list[int]:
        """Classes surely not in the image: not present, not ignored, not seen without a mask, and
        not sharing an object with a present class (a present "mug handle" means "mug" is there)."""
        names = self.source.class_names
        seen = set(targets.class_ids) | set(targets.unsure_class_ids)
        present_objects = {_object_of(names[class_id]) for class_id in seen}
        return [
            class_id
            for class_id in range(len(names))
            if class_id not in seen
            and class_id not in self.source.ignored_class_ids
            and _object_of(names[class_id]) not in present_objects
        ]


def _object_of(name: ClassName) -> str:
    """The object a class belongs to: itself, or the object of an (object, part) class."""
    return name[0] if isinstance(name, tuple) else name


class Ade20kEvalDataset:
    """ADE20K val as in Table A5: for every class present in the image, "What is {class} in this
    image?" answered "Sure, [SEG]."; one conversation per class, all sharing the image. Images
    without any labelled class (nothing to ask) are left out when the dataset is opened."""

    name = "ade20k"

    def __init__(self, source: SemSegSource, builder: SampleBuilder) -> None:
        self.source = source
        self.builder = builder
        self.images = [index for index in range(len(source)) if source.read_targets(index).class_ids]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, item: int) -> ImageSample:
        targets = self.source.read_targets(self.images[item])
        image_path = self.source.image_path(self.images[item])
        image = self.builder.read_image(image_path, (targets.height, targets.width))
        queries = [
            EvalQuery(
                [SlotTarget(_plain_name(self.source.class_names[class_id]), targets.mask(class_id), True)],
                EVAL_SINGLE_QUESTIONS["ade20k"],
                {
                    "dataset": self.name,
                    "item": item,
                    "image_id": image_path.stem,
                    "image_path": str(image_path),
                    "kinds": ["single"],
                    "keys": [f"{image_path.stem}/{class_id}"],
                    "class_ids": [class_id],
                },
            )
            for class_id in targets.class_ids
        ]
        return self.builder.evaluation(image, queries)


def _plain_name(name: ClassName) -> str:
    """A class name as asked in evaluation: "object part" for parts, underscores as spaces."""
    text = " ".join(name) if isinstance(name, tuple) else name
    return text.replace("_", " ")
