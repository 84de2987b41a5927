"""Reader for the referring-segmentation datasets, in the LISA/GSVA on-disk layout.

One class, :class:`ReferIndex`, reads every dataset the registry (:mod:`gsva.data.registry`)
stores as a :class:`~gsva.data.registry.ReferFormat`::

    <root>/refer_seg/refcoco/refs(unc).p   + instances.json   images/mscoco/images/train2014
    <root>/refer_seg/refcoco+/refs(unc).p  + instances.json   images/mscoco/images/train2014
    <root>/refer_seg/refcocog/refs(umd).p  + instances.json   images/mscoco/images/train2014
    <root>/refer_seg/refclef/refs(unc).p   + instances.json   images/saiapr_tc-12
    <root>/refer_seg/grefcoco/grefs(unc).json + instances.json   images/mscoco/images/train2014
    <root>/refer_seg/refzom/Ref_ZOM.p      + instances.json   images/mscoco/images/train2014

(image folders relative to ``<root>/refer_seg``). ``instances.json`` is COCO
style (``images``, ``annotations``, ``categories``); an image's ``file_name``
is relative to its dataset's image folder.

The refs file is a list of refs. A ref holds one or more sentences
(``{"sent", "sent_id", "raw", "tokens"}``) that all describe the same target
set, named by ``ann_id``:

* RefCOCO, RefCOCO+, RefCOCOg, RefCLEF: a pickle (written by Python 2, see
  :mod:`gsva.data.safe_pickle`) where ``ann_id`` is one annotation id; every
  ref has exactly one target.
* gRefCOCO: JSON where ``ann_id`` is a list of ids; ``[-1]`` marks a
  no-target ref.
* Ref-ZOM: a pickle where ``ann_id`` is a list of ids (a bare int is accepted
  too); the empty list marks a no-target ref. Ref-ZOM refs also carry a
  ``source`` field ("zero" / "one" / "many"); it is not read: the targets are
  taken from ``ann_id`` alone, as GSVA's evaluation does. Ref-ZOM draws on
  COCO train2014 and val2014 images; both are looked up in the train2014
  folder, as in the GSVA layout.

Every dataset accepts ``ann_id`` as a list or a bare int, with ``[-1]`` or
``[]`` for no target. RefCLEF's segmentations are lists of RLE dicts (one
mask per part); they are decoded as the union of their parts.

The files' structure is checked when they are loaded; what only spoils the
samples of one image (an ``ann_id`` that is not an annotation of the ref's
image, a segmentation that cannot be decoded) is a ``BadSampleError`` when a
mask of it is asked for.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gsva.data.doctor import OpenedDataset, check_image
from gsva.data.bad_samples import BadSampleError
from gsva.data.masks import decode_segmentation, union_of_masks
from gsva.data.registry import ReferFormat, stored_format
from gsva.data.safe_pickle import load_pickle

NO_TARGET_ANN_ID = -1
EXPRESSION_KINDS = ("single", "multi", "no-target")


def _load_json(path: Path) -> Any:
    with path.open("r", encoding="utf-8") as handle:
        return json.load(handle)


_REFS_LOADERS: dict[str, Callable[[Path], Any]] = {"pickle": load_pickle, "json": _load_json}
"""How a refs file of each ``ReferFormat.refs_encoding`` is loaded."""


def refer_format(dataset: str) -> ReferFormat:
    """How ``dataset`` is stored (its registry entry's format); ``ValueError`` listing the referring
    datasets otherwise."""
    return stored_format(dataset, ReferFormat)


def resolve_split_by(dataset: str, split_by: str | None) -> str | None:
    """``split_by``, or the dataset's default when ``None``; ``None`` for a dataset without split schemes."""
    default = refer_format(dataset).default_split_by
    if default is None:
        if split_by is not None:
            raise ValueError(
                f"{dataset} has a single refs file and no split scheme: pass split_by=None, got {split_by!r}"
            )
        return None
    return default if split_by is None else split_by


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


def refs_path(dataset_root: Path | str, dataset: str, split_by: str | None = None) -> Path:
    """Path of the dataset's refs file, e.g. ``refs(unc).p`` or ``grefs(unc).json``."""
    file_name = refer_format(dataset).refs_file.format(split_by=resolve_split_by(dataset, split_by))
    return Path(dataset_root) / "refer_seg" / dataset / file_name


def instances_path(dataset_root: Path | str, dataset: str) -> Path:
    """Path of the COCO style ``instances.json``."""
    return Path(dataset_root) / "refer_seg" / dataset / "instances.json"


def images_dir(dataset_root: Path | str, dataset: str = "grefcoco") -> Path:
    """Folder that an image's ``file_name`` is relative to."""
    return Path(dataset_root) / "refer_seg" / "images" / refer_format(dataset).images_folder


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
    """In-memory index over one referring dataset of the registry (files loaded once).

    ``split_by`` picks the refs file of datasets with several split schemes
    (``None``: the dataset's default, e.g. ``"umd"`` for RefCOCOg).
    """

    def __init__(self, dataset_root: Path | str, dataset: str = "grefcoco", split_by: str | None = None) -> None:
        self.dataset_root = Path(dataset_root)
        self.dataset = dataset
        self.format = refer_format(dataset)
        self.split_by = resolve_split_by(dataset, split_by)
        self.refs_file = refs_path(self.dataset_root, dataset, self.split_by)
        self.instances_file = instances_path(self.dataset_root, dataset)
        missing = [str(path) for path in (self.refs_file, self.instances_file) if not path.is_file()]
        if missing:
            raise FileNotFoundError(f"{dataset} annotation files not found, expected: {', '.join(missing)}")

        refs = _REFS_LOADERS[self.format.refs_encoding](self.refs_file)
        instances = _load_json(self.instances_file)
        if not isinstance(refs, list):
            raise ValueError(f"{self.refs_file}: expected a list of refs, got {type(refs).__name__}")
        for key in ("images", "annotations", "categories"):
            if not isinstance(instances, dict) or key not in instances:
                raise ValueError(f"{self.instances_file}: expected a JSON object with key {key!r}")

        self._images = {record.image_id: record for record in self._read_images(instances["images"])}
        self._annotations = self._read_annotations(instances["annotations"])
        self._annotations_of_image: dict[int, list[int]] = defaultdict(list)
        for ann_id, annotation in self._annotations.items():
            self._annotations_of_image[int(annotation["image_id"])].append(ann_id)
        self._expressions = self._index_expressions(refs)

    def _read_images(self, images: list[dict[str, Any]]) -> list[ImageRecord]:
        records = []
        for position, image in enumerate(images):
            _require_keys(image, ("id", "file_name", "height", "width"), f"{self.instances_file} image #{position}")
            records.append(
                ImageRecord(
                    image_id=int(image["id"]),
                    file_name=str(image["file_name"]),
                    height=int(image["height"]),
                    width=int(image["width"]),
                )
            )
        return records

    def _read_annotations(self, annotations: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
        by_id = {}
        for position, annotation in enumerate(annotations):
            _require_keys(
                annotation, ("id", "image_id", "segmentation"), f"{self.instances_file} annotation #{position}"
            )
            by_id[int(annotation["id"])] = annotation
        return by_id

    def _index_expressions(self, refs: list[Any]) -> dict[str, dict[int, list[ReferringExpression]]]:
        """Build ``split -> image_id -> expressions`` ordered by (ref_id, sentence position)."""
        by_split: dict[str, dict[int, list[ReferringExpression]]] = defaultdict(lambda: defaultdict(list))
        for position, ref in enumerate(refs):
            where = f"{self.refs_file} ref #{position}"
            _require_keys(ref, ("ref_id", "image_id", "ann_id", "split", "sentences"), where)
            where = f"{where} (ref_id {ref['ref_id']})"
            image_id = int(ref["image_id"])
            if image_id not in self._images:
                raise ValueError(f"{where}: image_id {image_id} is not in {self.instances_file}")
            ann_ids = self._ref_ann_ids(ref["ann_id"], where)
            if not isinstance(ref["sentences"], list):
                raise ValueError(f"{where}: 'sentences' must be a list, got {type(ref['sentences']).__name__}")
            for sentence_position, sentence in enumerate(ref["sentences"]):
                _require_keys(sentence, ("sent", "sent_id"), f"{where} sentence #{sentence_position}")
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

    def _ref_ann_ids(self, value: Any, where: str) -> tuple[int, ...]:
        """The ref's annotation ids, checked against the dataset's convention (whether they are
        annotations of the ref's image is checked by ``target_mask``)."""
        ann_ids = parse_ann_ids(value, where)
        if self.format.one_target_per_ref and len(ann_ids) != 1:
            raise ValueError(f"{where}: every {self.dataset} ref names exactly one annotation, got 'ann_id' {value!r}")
        return ann_ids

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
        return images_dir(self.dataset_root, self.dataset) / self.image(image_id).file_name

    def expressions(self, image_id: int, split: str) -> list[ReferringExpression]:
        """One expression per sentence of the image's refs in ``split`` (empty if it has none)."""
        return list(self._split(split).get(image_id, []))

    def count_summary(self, split: str) -> dict[str, int]:
        """Number of ``images`` and ``expressions`` in ``split``, and of expressions of each kind."""
        by_image = self._split(split)
        kinds = Counter(expression.kind for expressions in by_image.values() for expression in expressions)
        return {
            "images": len(by_image),
            "expressions": sum(kinds.values()),
            **{kind: kinds[kind] for kind in EXPRESSION_KINDS},
        }

    def target_mask(self, image_id: int, ann_ids: Sequence[int]) -> np.ndarray:
        """Union of the annotations' masks: bool ``(H, W)``, all ``False`` for empty ``ann_ids``;
        ``BadSampleError`` for an id that is not an annotation of the image, or a segmentation
        that cannot be decoded."""
        record = self.image(image_id)
        masks = []
        for ann_id in ann_ids:
            annotation = self._annotations.get(ann_id)
            if annotation is None or int(annotation["image_id"]) != image_id:
                found = "is not there" if annotation is None else f"belongs to image id {annotation['image_id']}"
                raise BadSampleError(
                    f"{self.refs_file} image id {image_id}",
                    f"'ann_id' names ann id {ann_id}: expected an annotation of image id {image_id} in "
                    f"{self.instances_file}, but ann id {ann_id} {found}",
                    "annotation id",
                )
            masks.append(self._annotation_mask(ann_id, annotation["segmentation"], record))
        return union_of_masks(masks, record.height, record.width)

    def _annotation_mask(self, ann_id: int, segmentation: Any, record: ImageRecord) -> np.ndarray:
        """Decode one segmentation; a list of RLE dicts (RefCLEF) is the union of its parts."""
        try:
            if _is_rle_list(segmentation):
                parts = [decode_segmentation(part, record.height, record.width) for part in segmentation]
                return union_of_masks(parts, record.height, record.width)
            return decode_segmentation(segmentation, record.height, record.width)
        except (TypeError, ValueError) as error:
            raise BadSampleError(f"{self.instances_file} ann id {ann_id}", str(error), "segmentation") from error

    def annotation_ids(self, image_id: int) -> list[int]:
        """Ids of every annotated object of the image (crowd regions excluded), sorted."""
        return sorted(
            ann_id for ann_id in self._annotations_of_image.get(image_id, []) if not self._annotations[ann_id].get("iscrowd", 0)
        )

    def _split(self, split: str) -> dict[int, list[ReferringExpression]]:
        if split not in self._expressions:
            raise ValueError(f"unknown split {split!r}; available splits: {', '.join(self.splits)}")
        return self._expressions[split]


def _require_keys(record: Any, keys: Sequence[str], where: str) -> None:
    """``ValueError`` naming ``where`` unless ``record`` is a dict holding every key."""
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a dict, got {type(record).__name__}")
    for key in keys:
        if key not in record:
            raise ValueError(f"{where}: missing field {key!r}")


def _is_rle_list(segmentation: Any) -> bool:
    """Whether ``segmentation`` is a non-empty list of RLE dicts (RefCLEF's form) rather than polygons."""
    if not isinstance(segmentation, list) or len(segmentation) == 0:
        return False
    return all(isinstance(part, dict) for part in segmentation)


def check_refer_seg(name: str, root: Path) -> OpenedDataset:
    """The dataset opened for the data doctor: its counts and every file training would read, each
    with the function that reads it as training would."""
    index = ReferIndex(root, name)
    counts: dict[str, int] = {}
    image_ids: set[int] = set()
    for split in index.splits:
        for key, value in index.count_summary(split).items():
            counts[f"{split}/{key}"] = value
        image_ids.update(index.image_ids(split))

    def check(image_id: int) -> Callable[[], None]:
        def run() -> None:
            record = index.image(image_id)
            check_image(index.image_path(image_id), (record.height, record.width))
            for split in index.splits:
                for expression in index.expressions(image_id, split):
                    index.target_mask(image_id, expression.ann_ids)

        return run

    return OpenedDataset(counts, [(index.image_path(i), check(i)) for i in sorted(image_ids)])
