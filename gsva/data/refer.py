"""Reader for the gRefCOCO on-disk format (also used by the synthetic dataset).

Layout under a dataset root::

    <root>/refer_seg/<dataset>/grefs(<split_by>).json   # list of refs
    <root>/refer_seg/<dataset>/instances.json           # COCO images, annotations, categories
    <root>/refer_seg/images/mscoco/images/train2014/<file_name>

A ref holds one or more sentences that all describe the same target set:
``ann_id`` is a list of annotation ids (or a bare int), and ``[-1]`` or ``[]``
marks a no-target ref.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gsva.data.masks import decode_segmentation, union_of_masks

NO_TARGET_ANN_ID = -1
EXPRESSION_KINDS = ("single", "multi", "no-target")


def expression_kind(num_targets: int) -> str:
    """``"no-target"`` (0 annotations), ``"single"`` (1) or ``"multi"`` (2 or more)."""
    if num_targets == 0:
        return "no-target"
    return "single" if num_targets == 1 else "multi"


@dataclass(frozen=True)
class ReferringExpression:
    """One sentence of a ref, with the annotations it refers to."""

    text: str
    ann_ids: tuple[int, ...]
    ref_id: int
    sent_id: int

    @property
    def no_target(self) -> bool:
        return len(self.ann_ids) == 0

    @property
    def kind(self) -> str:
        """``"no-target"``, ``"single"`` (one annotation) or ``"multi"`` (two or more)."""
        return expression_kind(len(self.ann_ids))


@dataclass(frozen=True)
class ImageRecord:
    image_id: int
    file_name: str
    height: int
    width: int


def refs_path(dataset_root: Path, dataset: str, split_by: str) -> Path:
    """Path of the refs file ``grefs(<split_by>).json``."""
    return dataset_root / "refer_seg" / dataset / f"grefs({split_by}).json"


def instances_path(dataset_root: Path, dataset: str) -> Path:
    """Path of the COCO style ``instances.json``."""
    return dataset_root / "refer_seg" / dataset / "instances.json"


def images_dir(dataset_root: Path) -> Path:
    """Folder holding the COCO ``train2014`` images."""
    return dataset_root / "refer_seg" / "images" / "mscoco" / "images" / "train2014"


def parse_ann_ids(value: Any, where: str) -> tuple[int, ...]:
    """Normalise a ref's ``ann_id`` field (list or bare int) to a tuple; ``()`` for no target."""
    raw_ids = [value] if isinstance(value, int) else value
    if not isinstance(raw_ids, list) or not all(isinstance(item, int) for item in raw_ids):
        raise ValueError(f"{where}: 'ann_id' must be an int or a list of ints, got {value!r}")
    if raw_ids == [NO_TARGET_ANN_ID]:
        return ()
    if NO_TARGET_ANN_ID in raw_ids:
        raise ValueError(f"{where}: 'ann_id' mixes -1 (no target) with real ids: {value!r}")
    return tuple(raw_ids)


class ReferIndex:
    """In-memory index over one gRefCOCO style dataset (JSON loaded once)."""

    def __init__(self, dataset_root: Path | str, dataset: str = "grefcoco", split_by: str = "unc") -> None:
        self.dataset_root = Path(dataset_root)
        self.refs_file = refs_path(self.dataset_root, dataset, split_by)
        self.instances_file = instances_path(self.dataset_root, dataset)
        missing = [str(path) for path in (self.refs_file, self.instances_file) if not path.is_file()]
        if missing:
            raise FileNotFoundError(f"gRefCOCO files not found, expected: {', '.join(missing)}")

        refs = _load_json(self.refs_file)
        instances = _load_json(self.instances_file)
        if not isinstance(refs, list):
            raise ValueError(f"{self.refs_file}: expected a JSON list of refs, got {type(refs).__name__}")
        for key in ("images", "annotations", "categories"):
            if not isinstance(instances, dict) or key not in instances:
                raise ValueError(f"{self.instances_file}: expected a JSON object with key {key!r}")

        self._images = {
            int(image["id"]): ImageRecord(
                image_id=int(image["id"]),
                file_name=str(image["file_name"]),
                height=int(image["height"]),
                width=int(image["width"]),
            )
            for image in instances["images"]
        }
        self._annotations: dict[int, dict[str, Any]] = {int(ann["id"]): ann for ann in instances["annotations"]}
        self._annotations_of_image: dict[int, list[int]] = defaultdict(list)
        for ann_id, annotation in self._annotations.items():
            self._annotations_of_image[int(annotation["image_id"])].append(ann_id)
        self._category_names = {int(cat["id"]): str(cat["name"]) for cat in instances["categories"]}
        self._expressions = self._index_expressions(refs)

    def _index_expressions(self, refs: list[dict[str, Any]]) -> dict[str, dict[int, list[ReferringExpression]]]:
        """Build ``split -> image_id -> expressions`` ordered by (ref_id, sentence position)."""
        by_split: dict[str, dict[int, list[ReferringExpression]]] = defaultdict(lambda: defaultdict(list))
        for position, ref in enumerate(refs):
            where = f"{self.refs_file} ref #{position}"
            for key in ("ref_id", "image_id", "ann_id", "split", "sentences"):
                if key not in ref:
                    raise ValueError(f"{where}: missing field {key!r}")
            image_id = int(ref["image_id"])
            if image_id not in self._images:
                raise ValueError(f"{where}: image_id {image_id} is not in {self.instances_file}")
            ann_ids = parse_ann_ids(ref["ann_id"], where)
            for sentence in ref["sentences"]:
                by_split[str(ref["split"])][image_id].append(
                    ReferringExpression(
                        text=str(sentence["sent"]),
                        ann_ids=ann_ids,
                        ref_id=int(ref["ref_id"]),
                        sent_id=int(sentence["sent_id"]),
                    )
                )
        # A stable sort keeps the sentence order within each ref.
        return {
            split: {
                image_id: sorted(expressions, key=lambda expression: expression.ref_id)
                for image_id, expressions in by_image.items()
            }
            for split, by_image in by_split.items()
        }

    @property
    def splits(self) -> tuple[str, ...]:
        """Names of the splits that have refs, sorted."""
        return tuple(sorted(self._expressions))

    def image_ids(self, split: str) -> list[int]:
        """Sorted ids of the images that have refs in ``split``."""
        return sorted(self._split(split))

    def image(self, image_id: int) -> ImageRecord:
        if image_id not in self._images:
            raise ValueError(f"image id {image_id} is not in {self.instances_file}")
        return self._images[image_id]

    def image_path(self, image_id: int) -> Path:
        return images_dir(self.dataset_root) / self.image(image_id).file_name

    def expressions(self, image_id: int, split: str) -> list[ReferringExpression]:
        """One expression per sentence of the image's refs in ``split`` (empty if it has none)."""
        return list(self._split(split).get(image_id, []))

    def target_mask(self, image_id: int, ann_ids: Sequence[int]) -> np.ndarray:
        """Union of the annotations' masks: bool ``(H, W)``, all ``False`` for empty ``ann_ids``."""
        record = self.image(image_id)
        masks = []
        for ann_id in ann_ids:
            annotation = self._annotations.get(ann_id)
            if annotation is None:
                raise ValueError(f"ann id {ann_id} (image id {image_id}) is not in {self.instances_file}")
            if int(annotation["image_id"]) != image_id:
                raise ValueError(
                    f"ann id {ann_id} belongs to image id {annotation['image_id']}, not image id {image_id}"
                )
            masks.append(decode_segmentation(annotation["segmentation"], record.height, record.width))
        return union_of_masks(masks, record.height, record.width)

    def annotation_ids(self, image_id: int) -> list[int]:
        """Ids of every annotated object of the image (crowd regions excluded), sorted."""
        return sorted(
            ann_id for ann_id in self._annotations_of_image.get(image_id, []) if not self._annotations[ann_id].get("iscrowd", 0)
        )

    def category_names(self) -> dict[int, str]:
        return dict(self._category_names)

    def _split(self, split: str) -> dict[int, list[ReferringExpression]]:
        if split not in self._expressions:
            raise ValueError(f"unknown split {split!r}; available splits: {', '.join(self.splits)}")
        return self._expressions[split]


def _load_json(path: Path) -> Any:
    with path.open("r", encoding="utf-8") as handle:
        return json.load(handle)
