"""Readers for the semantic segmentation datasets of the pretraining mixture (the LISA/GSVA layout).

Layout under a dataset root::

    ade20k/images/{training,validation}/*.jpg       ade20k/annotations/{training,validation}/*.png
    coco/train2017/*.jpg                            cocostuff/train2017/*.png
    mapillary/config_v2.0.json                      mapillary/training/{images/*.jpg,v2.0/labels/*.png}
    vlpart/paco/annotations/paco_lvis_v1_train.json (images under coco/, e.g. "train2017/....jpg")
    vlpart/pascal_part/train.json                   (images under vlpart/pascal_part/VOCdevkit/VOC2010/JPEGImages/)

Each dataset's entry in the registry (``gsva.data.registry``) names its layout and its splits;
``LAYOUT_OPENERS`` opens a dataset stored in each layout.

A source lists images and reads, per image, the classes present and one bool ``(H, W)`` mask per
class: a class is all of its pixels in the image (a semantic target, not an instance).

Label-map sources (ADE20K, COCO-Stuff, Mapillary) share one reader, parameterised by a
``LabelCoding``:

* ADE20K: value 0 ("other") is no class; value ``v`` in 1..150 is class ``v - 1``.
* COCO-Stuff: value 255 is no class; value ``v`` in 0..181 is class ``v``. As in LISA, classes whose
  name holds a "-" ("wall-other", "desk-stuff", ...) are ignored; so are the 11 thing ids COCO never
  annotates, whose objects (hats, windows, doors, ...) are often visible but unlabelled.
* Mapillary: value ``v`` is entry ``v`` of the config's ``"labels"``, named by its ``"readable"``
  field lower-cased and otherwise unchanged (e.g. "traffic sign (front)"), as LISA does. The entry
  whose name is "unlabeled" is ignored, unless ``LabelOptions.mapillary_unlabeled_is_class``
  (``data.mapillary_unlabeled: class``) makes it a class like any other, as LISA and the authors'
  released GSVA code do (data/sem_seg_dataset.py:30-46 and 290-296 of the release).

Ignored classes (``ignored_class_ids``) are never in ``SemSegTargets.class_ids``, and a sampler must
not draw them as absent classes either. Images are the label PNGs' stems (``<stem>.jpg`` in the image
folder), sorted; every label must have its image. Label PNGs are decoded with
``cv2.IMREAD_UNCHANGED``, except palette ("P" mode) PNGs such as Mapillary v2.0 labels: OpenCV
always expands a palette to colours, so those are decoded with PIL, which returns the palette indices.

COCO-json sources (PACO-LVIS, PASCAL-Part) share one reader. Category names are ``"object"`` or
``"object:part"``; a trailing ``"_(...)"`` qualifier of either piece is dropped
("pan_(for_cooking):base" -> ("pan", "base")); underscores are kept in ``class_names`` and become
spaces in ``phrase_class`` (unless asked to keep them). Class id = position of the category in
the categories sorted by id. A class's mask is the union of its annotations in the image; each
annotation is also an instance of its class (``SemSegTargets.instance_class_ids``, in annotation
order), with its own mask. Annotations that give no mask (crowd, or empty/missing segmentation) are
neither targets nor instances; a class that appears only through such annotations is listed in
``SemSegTargets.unsure_class_ids`` (present, so not absent either). Images without any annotation
that gives a mask are dropped from the list. Images are sorted by image id.

The targets' ``(height, width)`` must equal the image's size as ``cv2.imread`` decodes it (EXIF
orientation applied); this is checked from the image's header on every ``read_targets``. Files
missing when a dataset is opened raise ``FileNotFoundError`` naming the expected path; what spoils
the samples of one image when it is read (its image or label missing or unreadable, sizes that
disagree, a segmentation that cannot be decoded) raises ``BadSampleError`` naming the file; other
inconsistent files raise ``ValueError`` naming the file.
"""

from __future__ import annotations

import json
import os
import random
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np
from PIL import Image

from gsva.data.doctor import OpenedDataset, check_image
from gsva.data.bad_samples import BadSampleError
from gsva.data.sem_seg.class_names import ADE20K_CLASSES, COCO_STUFF_CLASSES, COCO_STUFF_UNUSED_IDS
from gsva.data.masks import decode_segmentation, union_of_masks
from gsva.data.registry import SemSegFormat, stored_format

ClassName = str | tuple[str, str]
"""A plain class name, or ``(object, part)`` for the part datasets."""


@dataclass(frozen=True)
class SemSegTargets:
    """The classes present in one image and their masks, at the image's original size."""

    height: int
    width: int
    class_ids: list[int]
    """Present classes usable as targets, sorted; never an ignored class."""
    decode_mask: Callable[[int], np.ndarray] = field(repr=False, compare=False)
    """Builds the bool ``(height, width)`` mask of a class of ``class_ids``; use ``mask``."""
    unsure_class_ids: list[int] = field(default_factory=list)
    """Classes seen in the image without a usable mask: neither targets nor absent. Sorted."""
    instance_class_ids: list[int] = field(default_factory=list)
    """COCO-json sources: the class of each annotation that gives a mask (an instance), in
    annotation order; empty for label maps, which have no instances."""
    decode_instance: Callable[[int], np.ndarray] | None = field(default=None, repr=False, compare=False)
    """Builds the bool ``(height, width)`` mask of an instance; use ``instance_mask``."""

    def mask(self, class_id: int) -> np.ndarray:
        """Bool ``(height, width)`` mask of every pixel of ``class_id``, one of ``class_ids``."""
        if class_id not in self.class_ids:
            raise ValueError(f"class id {class_id} is not a target of this image (targets: {self.class_ids})")
        return self.decode_mask(class_id)

    def instance_mask(self, index: int) -> np.ndarray:
        """Bool ``(height, width)`` mask of instance ``index`` of ``instance_class_ids``."""
        if self.decode_instance is None or not 0 <= index < len(self.instance_class_ids):
            raise ValueError(f"instance {index} is not one of the {len(self.instance_class_ids)} of this image")
        return self.decode_instance(index)


class SemSegSource(Protocol):
    """A list of images of one dataset, with the semantic targets of each."""

    name: str
    class_names: list[ClassName]
    """Every class of the dataset, index = class id (absent classes are drawn from these)."""
    ignored_class_ids: frozenset[int]
    """Classes that are never targets and must not be drawn as absent."""

    def __len__(self) -> int: ...

    def image_path(self, index: int) -> Path: ...

    def read_targets(self, index: int) -> SemSegTargets: ...


def phrase_class(name: ClassName, rng: random.Random, keep_underscores: bool = False) -> str:
    """Text for a class: a plain name as it is; a part as "{object} {part}" or "the {part} of the
    {object}", each with probability 1/2 (as LISA). Underscores become spaces unless
    ``keep_underscores`` (as the authors' released code writes PACO-LVIS names)."""
    pieces = [name] if isinstance(name, str) else list(name)
    if not keep_underscores:
        pieces = [piece.replace("_", " ") for piece in pieces]
    if len(pieces) == 1:
        return pieces[0]
    obj, part = pieces
    return f"{obj} {part}" if rng.random() < 0.5 else f"the {part} of the {obj}"


def parse_category_name(name: str) -> ClassName:
    """``"object"`` -> ``"object"``; ``"object:part"`` -> ``("object", "part")``; a trailing
    ``"_(...)"`` qualifier of either piece is dropped."""
    pieces = [piece.split("_(")[0].strip() for piece in name.strip().split(":")]
    if len(pieces) > 2 or not all(pieces):
        raise ValueError(f"category name {name!r}: expected 'object' or 'object:part'")
    return pieces[0] if len(pieces) == 1 else (pieces[0], pieces[1])


@dataclass(frozen=True)
class LabelOptions:
    """Choices in how label files are read (keys of the config's ``data`` section)."""

    mapillary_unlabeled_is_class: bool = False
    """Mapillary's "unlabeled" label is a class like any other; False: it is ignored."""


# ---------------------------------------------------------------------------------------------
# Files


def read_label_png(path: Path) -> np.ndarray:
    """Decode a label PNG into its pixel values: ``(H, W)`` uint8 or uint16.

    A palette PNG gives its palette indices (OpenCV would return the palette's colours, so PIL
    decodes those); any other PNG is decoded by ``cv2.IMREAD_UNCHANGED`` and must have one channel.
    """
    if not path.is_file():
        raise BadSampleError(path, "label file not found", "missing label")
    try:
        with Image.open(path) as image:
            if image.mode == "P":
                return np.asarray(image)
    except OSError as error:
        raise BadSampleError(path, f"cannot read the label: {error}", "unreadable label") from error
    label = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if label is None:
        raise BadSampleError(path, "cannot read the label: not a decodable image file", "unreadable label")
    if label.ndim != 2:
        raise BadSampleError(
            path,
            f"expected a single-channel or palette PNG of class values, got shape {label.shape}",
            "unreadable label",
        )
    return label


def decoded_image_size(path: Path) -> tuple[int, int]:
    """``(height, width)`` of an image as ``cv2.imread`` decodes it (EXIF orientation applied),
    read from the file's header only."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
    except FileNotFoundError as error:
        raise BadSampleError(path, "image file not found", "missing image") from error
    except OSError as error:
        raise BadSampleError(path, f"cannot read the image: {error}", "unreadable image") from error
    return (width, height) if orientation in _TRANSPOSING_ORIENTATIONS else (height, width)


_EXIF_ORIENTATION = 0x0112
_TRANSPOSING_ORIENTATIONS = frozenset({5, 6, 7, 8})


def _check_size(height: int, width: int, image_path: Path, what: str) -> None:
    image_size = decoded_image_size(image_path)
    if image_size != (height, width):
        raise BadSampleError(
            image_path,
            f"{what} is {height}x{width} (height x width) but the image decodes to "
            f"{image_size[0]}x{image_size[1]} (EXIF orientation applied)",
            "image size",
        )


def _require_files(paths: Sequence[Path], what: str) -> None:
    """Raise ``FileNotFoundError`` naming the first missing path; lists each folder once."""
    folder_contents: dict[Path, set[str]] = {}
    missing = []
    for path in paths:
        if path.parent not in folder_contents:
            folder = path.parent
            folder_contents[folder] = set(os.listdir(folder)) if folder.is_dir() else set()
        if path.name not in folder_contents[path.parent]:
            missing.append(path)
    if missing:
        raise FileNotFoundError(f"{len(missing)} {what} not found, the first expected at: {missing[0]}")


def _require_file(path: Path, what: str) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found, expected at: {path}")


def _load_json(path: Path, what: str) -> Any:
    _require_file(path, what)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from error


# ---------------------------------------------------------------------------------------------
# Label-map sources


@dataclass(frozen=True)
class LabelCoding:
    """How a label PNG's pixel values name classes: class id = value - ``offset``;
    ``void_values`` name no class (unlabelled pixels)."""

    offset: int
    void_values: frozenset[int]

    def describe(self, num_classes: int) -> str:
        void = ", ".join(str(value) for value in sorted(self.void_values))
        classes = f"{self.offset}..{self.offset + num_classes - 1} (class id = value - {self.offset})"
        return f"{classes} or {void} (no class)" if void else classes


class LabelMapSource:
    """Images with one label PNG each (see the module docstring)."""

    def __init__(
        self,
        name: str,
        class_names: Sequence[ClassName],
        coding: LabelCoding,
        label_paths: Sequence[Path],
        image_paths: Sequence[Path],
        ignored_class_ids: frozenset[int] = frozenset(),
    ) -> None:
        if len(label_paths) != len(image_paths):
            raise ValueError(f"{name}: {len(label_paths)} labels but {len(image_paths)} images")
        self.name = name
        self.class_names: list[ClassName] = list(class_names)
        self.coding = coding
        self.ignored_class_ids = ignored_class_ids
        self.label_paths = list(label_paths)
        self.image_paths = list(image_paths)

    @classmethod
    def from_folders(
        cls,
        name: str,
        class_names: Sequence[ClassName],
        coding: LabelCoding,
        label_dir: Path,
        image_dir: Path,
        ignored_class_ids: frozenset[int] = frozenset(),
    ) -> LabelMapSource:
        """One sample per ``label_dir/<stem>.png`` (sorted), with image ``image_dir/<stem>.jpg``."""
        if not label_dir.is_dir():
            raise FileNotFoundError(f"{name}: label folder not found, expected at: {label_dir}")
        label_paths = sorted(label_dir / entry for entry in os.listdir(label_dir) if entry.endswith(".png"))
        if not label_paths:
            raise FileNotFoundError(f"{name}: no label files, expected {label_dir / '*.png'}")
        image_paths = [image_dir / f"{path.stem}.jpg" for path in label_paths]
        _require_files(image_paths, f"{name} images")
        return cls(name, class_names, coding, label_paths, image_paths, ignored_class_ids)

    def __len__(self) -> int:
        return len(self.label_paths)

    def image_path(self, index: int) -> Path:
        return self.image_paths[index]

    def read_targets(self, index: int) -> SemSegTargets:
        label_path = self.label_paths[index]
        label = read_label_png(label_path)
        height, width = label.shape
        _check_size(height, width, self.image_paths[index], f"label {label_path}")
        values = np.flatnonzero(np.bincount(label.ravel())).tolist()
        class_ids = [value - self.coding.offset for value in values if value not in self.coding.void_values]
        invalid = [class_id + self.coding.offset for class_id in class_ids if not 0 <= class_id < len(self.class_names)]
        if invalid:
            raise ValueError(
                f"label {label_path}: values {invalid} are not classes of {self.name}; "
                f"expected {self.coding.describe(len(self.class_names))}"
            )
        offset = self.coding.offset
        return SemSegTargets(
            height=height,
            width=width,
            class_ids=[class_id for class_id in class_ids if class_id not in self.ignored_class_ids],
            decode_mask=lambda class_id: label == class_id + offset,
        )


# ---------------------------------------------------------------------------------------------
# COCO-json sources


@dataclass(frozen=True)
class _CocoImage:
    file_name: str
    height: int
    width: int
    annotations: list[dict[str, Any]]
    """Every annotation of the image (crowd ones included)."""


def _gives_mask(annotation: dict[str, Any]) -> bool:
    return not annotation.get("iscrowd", 0) and bool(annotation.get("segmentation"))


class CocoJsonSource:
    """Images of a COCO-style instances json whose categories are objects or object parts
    (see the module docstring)."""

    def __init__(self, name: str, json_path: Path, image_root: Path) -> None:
        data = _load_json(json_path, f"{name} annotation file")
        if not isinstance(data, dict) or not all(key in data for key in ("images", "annotations", "categories")):
            raise ValueError(f"{json_path}: expected a JSON object with 'images', 'annotations' and 'categories'")
        self.name = name
        self.json_path = json_path
        self.image_root = image_root
        self.ignored_class_ids: frozenset[int] = frozenset()
        categories = sorted(data["categories"], key=lambda category: int(category["id"]))
        self.class_names: list[ClassName] = [parse_category_name(str(category["name"])) for category in categories]
        self._class_of_category = {int(category["id"]): index for index, category in enumerate(categories)}
        annotations_of_image: dict[int, list[dict[str, Any]]] = defaultdict(list)
        for annotation in data["annotations"]:
            if int(annotation["category_id"]) not in self._class_of_category:
                raise ValueError(
                    f"{json_path}: annotation id {annotation.get('id')} has category_id "
                    f"{annotation['category_id']}, which is not among the categories"
                )
            annotations_of_image[int(annotation["image_id"])].append(annotation)
        images = {int(image["id"]): image for image in data["images"]}
        unknown = sorted(set(annotations_of_image) - set(images))
        if unknown:
            raise ValueError(f"{json_path}: annotations refer to image ids {unknown[:5]} that are not among the images")
        self._images = [
            _CocoImage(
                file_name=str(images[image_id]["file_name"]),
                height=int(images[image_id]["height"]),
                width=int(images[image_id]["width"]),
                annotations=annotations,
            )
            for image_id, annotations in sorted(annotations_of_image.items())
            if any(_gives_mask(annotation) for annotation in annotations)
        ]
        _require_files([self.image_path(index) for index in range(len(self))], f"{name} images")

    def __len__(self) -> int:
        return len(self._images)

    def image_path(self, index: int) -> Path:
        return self.image_root / self._images[index].file_name

    def read_targets(self, index: int) -> SemSegTargets:
        image = self._images[index]
        _check_size(image.height, image.width, self.image_path(index), f"{self.json_path} image {image.file_name!r}")
        segmentations: dict[int, list[dict[str, Any]]] = defaultdict(list)
        instances: list[dict[str, Any]] = []
        seen: set[int] = set()
        for annotation in image.annotations:
            class_id = self._class_of_category[int(annotation["category_id"])]
            seen.add(class_id)
            if _gives_mask(annotation):
                segmentations[class_id].append(annotation)
                instances.append(annotation)

        def decode_mask(class_id: int) -> np.ndarray:
            return union_of_masks(
                [self._decode(annotation, image) for annotation in segmentations[class_id]], image.height, image.width
            )

        def decode_instance(index: int) -> np.ndarray:
            return union_of_masks([self._decode(instances[index], image)], image.height, image.width)

        return SemSegTargets(
            height=image.height,
            width=image.width,
            class_ids=sorted(segmentations),
            decode_mask=decode_mask,
            unsure_class_ids=sorted(seen - set(segmentations)),
            instance_class_ids=[self._class_of_category[int(annotation["category_id"])] for annotation in instances],
            decode_instance=decode_instance,
        )

    def _decode(self, annotation: dict[str, Any], image: _CocoImage) -> np.ndarray:
        try:
            return decode_segmentation(annotation["segmentation"], image.height, image.width)
        except (ValueError, TypeError) as error:
            source = f"{self.json_path} annotation id {annotation.get('id')}"
            raise BadSampleError(source, str(error), "segmentation") from error


# ---------------------------------------------------------------------------------------------
# The folder layouts of the datasets


def _open_ade20k_scene_parsing(name: str, root: Path, split: str, options: LabelOptions) -> SemSegSource:
    folder = {"train": "training", "val": "validation"}[split]
    return LabelMapSource.from_folders(
        name,
        ADE20K_CLASSES,
        LabelCoding(offset=1, void_values=frozenset({0})),
        label_dir=root / "ade20k" / "annotations" / folder,
        image_dir=root / "ade20k" / "images" / folder,
    )


def _open_cocostuff_label_maps(name: str, root: Path, split: str, options: LabelOptions) -> SemSegSource:
    ignored = frozenset(index for index, class_name in enumerate(COCO_STUFF_CLASSES) if "-" in class_name)
    return LabelMapSource.from_folders(
        name,
        COCO_STUFF_CLASSES,
        LabelCoding(offset=0, void_values=frozenset({255})),
        label_dir=root / "cocostuff" / "train2017",
        image_dir=root / "coco" / "train2017",
        ignored_class_ids=ignored | COCO_STUFF_UNUSED_IDS,
    )


def _open_mapillary_vistas_v2(name: str, root: Path, split: str, options: LabelOptions) -> SemSegSource:
    config_path = root / "mapillary" / "config_v2.0.json"
    config = _load_json(config_path, "mapillary config")
    labels = config.get("labels") if isinstance(config, dict) else None
    if not isinstance(labels, list) or not all(isinstance(label, dict) and "readable" in label for label in labels):
        raise ValueError(f"{config_path}: expected 'labels', a list of objects with a 'readable' name")
    class_names = [str(label["readable"]).lower() for label in labels]
    ignored = frozenset() if options.mapillary_unlabeled_is_class else frozenset(
        index for index, class_name in enumerate(class_names) if class_name == "unlabeled"
    )
    return LabelMapSource.from_folders(
        name,
        class_names,
        LabelCoding(offset=0, void_values=frozenset()),
        label_dir=root / "mapillary" / "training" / "v2.0" / "labels",
        image_dir=root / "mapillary" / "training" / "images",
        ignored_class_ids=ignored,
    )


def _open_paco_lvis_json(name: str, root: Path, split: str, options: LabelOptions) -> SemSegSource:
    json_path = root / "vlpart" / "paco" / "annotations" / "paco_lvis_v1_train.json"
    return CocoJsonSource(name, json_path, image_root=root / "coco")


def _open_pascal_part_json(name: str, root: Path, split: str, options: LabelOptions) -> SemSegSource:
    pascal_part = root / "vlpart" / "pascal_part"
    image_root = pascal_part / "VOCdevkit" / "VOC2010" / "JPEGImages"
    return CocoJsonSource(name, pascal_part / "train.json", image_root)


LAYOUT_OPENERS: dict[str, Callable[[str, Path, str, LabelOptions], SemSegSource]] = {
    "ade20k_scene_parsing": _open_ade20k_scene_parsing,
    "cocostuff_label_maps": _open_cocostuff_label_maps,
    "mapillary_vistas_v2": _open_mapillary_vistas_v2,
    "paco_lvis_json": _open_paco_lvis_json,
    "pascal_part_json": _open_pascal_part_json,
}
"""Folder layout (``SemSegFormat.layout``) -> the opener of a dataset stored in it, given the
dataset's name, root, split and label options."""


def open_semseg_source(
    name: str, dataset_root: Path | str, split: str = "train", options: LabelOptions = LabelOptions()
) -> SemSegSource:
    """Open semantic segmentation dataset ``name`` of the registry (``gsva.data.registry``) under
    ``dataset_root``, its labels read as ``options`` choose; its registry entry lists its splits
    (ADE20K: "train" and "val", the others "train" only)."""
    stored = stored_format(name, SemSegFormat)
    if split not in stored.splits:
        raise ValueError(f"{name}: no split {split!r}; available: {', '.join(stored.splits)}")
    return LAYOUT_OPENERS[stored.layout](name, Path(dataset_root), split, options)


def check_sem_seg(name: str, root: Path) -> OpenedDataset:
    """The dataset opened for the data doctor: its counts and every file training would read, each
    with the function that reads it as training would."""
    source = open_semseg_source(name, root, "train")

    def check(item: int) -> Callable[[], None]:
        def run() -> None:
            targets = source.read_targets(item)
            check_image(source.image_path(item), (targets.height, targets.width))
            for class_id in targets.class_ids:
                targets.mask(class_id)

        return run

    counts = {"train/images": len(source), "classes": len(source.class_names)}
    return OpenedDataset(counts, [(source.image_path(i), check(i)) for i in range(len(source))])
