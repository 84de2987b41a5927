"""Writers of tiny semantic segmentation datasets in their on-disk formats (the LISA/GSVA layout).

Each writer puts 2-3 small JPEG images (distinct sizes) and their annotations under a root, in the
formats of the released datasets:

* ADE20K: uint8 grayscale label PNGs, 0 = other (unlabelled), ``v`` = class ``v - 1``;
* COCO-Stuff: uint8 grayscale ``stuffthingmaps`` PNGs, ``v`` = class ``v``, 255 = unlabelled;
* Mapillary v2.0: ``config_v2.0.json`` with a ``"labels"`` list, and palette ("P" mode) label PNGs
  whose palette index is the label's position in that list (the palette holds the label colours);
* PACO-LVIS and PASCAL-Part: COCO-style instances json with polygon and compressed-RLE
  segmentations, categories ``"object"`` or ``"object:part"``.

Writers return, per split, what a reader must find: the class names and, per image in the
reader's order, the usable target masks by class id (regions never overlap).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from gsva.data.sem_seg.class_names import ADE20K_CLASSES, COCO_STUFF_CLASSES
from gsva.data.masks import decode_segmentation, encode_rle

ClassName = str | tuple[str, str]
Rect = tuple[int, int, int, int]
"""(top, bottom, left, right), bottom/right exclusive."""


@dataclass
class ExpectedImage:
    image_path: Path
    height: int
    width: int
    masks: dict[int, np.ndarray]
    """Class id -> bool (height, width) mask, for every class that is a target."""
    label_values: dict[int, int] = field(default_factory=dict)
    """Label-map datasets: class id -> the pixel value written for it in the label PNG."""
    unsure_class_ids: list[int] = field(default_factory=list)


@dataclass
class ExpectedSource:
    class_names: list[ClassName]
    images: list[ExpectedImage]


@dataclass(frozen=True)
class _Region:
    value: int
    rect: Rect
    target: bool = True
    """False for a class that the reader must ignore."""


def rect_mask(height: int, width: int, rect: Rect) -> np.ndarray:
    top, bottom, left, right = rect
    mask = np.zeros((height, width), dtype=bool)
    mask[top:bottom, left:right] = True
    return mask


def write_jpeg(path: Path, height: int, width: int, seed: int) -> None:
    """A small real JPEG of random colours, (height, width)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    if not cv2.imwrite(str(path), pixels):
        raise OSError(f"cannot write {path}")


def write_gray_png(path: Path, label: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), label):
        raise OSError(f"cannot write {path}")


def _label_map_image(
    image_path: Path,
    label_path: Path,
    size: tuple[int, int],
    fill: int,
    regions: list[_Region],
    offset: int,
    seed: int,
) -> tuple[ExpectedImage, np.ndarray]:
    """Write the JPEG, paint the label (not written) and what a reader must find."""
    height, width = size
    write_jpeg(image_path, height, width, seed)
    label = np.full((height, width), fill, dtype=np.uint8)
    expected = ExpectedImage(image_path, height, width, masks={})
    for region in regions:
        mask = rect_mask(height, width, region.rect)
        label[mask] = region.value
        if region.target:
            expected.masks[region.value - offset] = mask
            expected.label_values[region.value - offset] = region.value
    return expected, label


def write_ade20k(root: Path) -> dict[str, ExpectedSource]:
    """``ade20k/images/{training,validation}/*.jpg`` and ``ade20k/annotations/.../*.png``."""
    names = ("wall", "building", "sky", "floor", "tree", "person", "flag")
    value = {name: ADE20K_CLASSES.index(name) + 1 for name in names}
    splits = {
        "train": ("training", [
            ("ADE_train_00000001", (40, 48), [
                _Region(value["wall"], (0, 15, 0, 48)),
                _Region(value["sky"], (15, 30, 0, 24)),
                _Region(value["flag"], (30, 40, 30, 48)),
            ]),
            ("ADE_train_00000002", (36, 52), [
                _Region(value["person"], (5, 20, 10, 30)),
                _Region(value["building"], (25, 36, 0, 52)),
            ]),
        ]),
        "val": ("validation", [
            ("ADE_val_00000001", (44, 40), [
                _Region(value["tree"], (0, 10, 0, 20)),
                _Region(value["floor"], (30, 44, 0, 40)),
            ]),
        ]),
    }
    result = {}
    for split, (folder, images) in splits.items():
        expected_images = []
        for seed, (stem, size, regions) in enumerate(images):
            label_path = root / "ade20k" / "annotations" / folder / f"{stem}.png"
            expected, label = _label_map_image(
                root / "ade20k" / "images" / folder / f"{stem}.jpg", label_path, size, 0, regions, offset=1, seed=seed
            )
            write_gray_png(label_path, label)
            expected_images.append(expected)
        result[split] = ExpectedSource(list(ADE20K_CLASSES), expected_images)
    return result


def write_cocostuff(root: Path) -> dict[str, ExpectedSource]:
    """``coco/train2017/*.jpg`` and ``cocostuff/train2017/*.png`` (255 = unlabelled). Classes with
    a "-" in their name are written but must be ignored; the last image has no usable class."""
    names = ("person", "dog", "sky", "tree", "wall-other", "building-other")
    value = {name: COCO_STUFF_CLASSES.index(name) for name in names}
    images = [
        ("000000000009", (40, 48), [
            _Region(value["person"], (0, 20, 0, 20)),
            _Region(value["sky"], (0, 10, 24, 48)),
            _Region(value["wall-other"], (25, 40, 0, 48), target=False),
        ]),
        ("000000000025", (44, 56), [
            _Region(value["dog"], (10, 30, 10, 30)),
            _Region(value["tree"], (0, 8, 0, 56)),
            _Region(value["building-other"], (32, 44, 40, 56), target=False),
        ]),
        ("000000000030", (32, 36), [_Region(value["wall-other"], (0, 16, 0, 36), target=False)]),
    ]
    expected_images = []
    for seed, (stem, size, regions) in enumerate(images):
        label_path = root / "cocostuff" / "train2017" / f"{stem}.png"
        expected, label = _label_map_image(
            root / "coco" / "train2017" / f"{stem}.jpg", label_path, size, 255, regions, offset=0, seed=10 + seed
        )
        write_gray_png(label_path, label)
        expected_images.append(expected)
    return {"train": ExpectedSource(list(COCO_STUFF_CLASSES), expected_images)}


MAPILLARY_LABELS: list[dict[str, Any]] = [
    {"color": [165, 42, 42], "instances": True, "readable": "Bird", "name": "animal--bird", "evaluate": True},
    {
        "color": [128, 64, 128],
        "instances": False,
        "readable": "Road",
        "name": "construction--flat--road",
        "evaluate": True,
    },
    {"color": [70, 130, 180], "instances": False, "readable": "Sky", "name": "nature--sky", "evaluate": True},
    {
        "color": [220, 220, 0],
        "instances": True,
        "readable": "Traffic Sign (Front)",
        "name": "object--traffic-sign--front",
        "evaluate": True,
    },
    {"color": [0, 0, 142], "instances": True, "readable": "Car", "name": "object--vehicle--car", "evaluate": True},
    {"color": [0, 0, 0], "instances": False, "readable": "Unlabeled", "name": "void--unlabeled", "evaluate": False},
]
MAPILLARY_UNLABELED = 5


def write_palette_png(path: Path, indices: np.ndarray, colours: list[list[int]]) -> None:
    """A "P" mode PNG: ``indices`` (H, W) uint8 into a palette of ``colours`` (RGB)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(indices)  # "L"; putpalette makes it "P" with the same bytes as indices
    palette = [channel for colour in colours for channel in colour]
    image.putpalette(palette + [0] * (768 - len(palette)))
    image.save(path)


def write_mapillary(root: Path) -> dict[str, ExpectedSource]:
    """``mapillary/config_v2.0.json``, ``training/images/*.jpg``, ``training/v2.0/labels/*.png``
    (palette PNGs; "Unlabeled", the last label, fills what is not drawn)."""
    config_path = root / "mapillary" / "config_v2.0.json"
    config_path.parent.mkdir(parents=True, exist_ok=True)
    config_path.write_text(json.dumps({"labels": MAPILLARY_LABELS}, indent=2), encoding="utf-8")
    images = [
        ("-2Vz4C1lxn4dVtvGbAsYJg", (48, 64), [_Region(1, (24, 48, 0, 64)), _Region(2, (0, 20, 0, 64))]),
        ("0aIf8rBJwXA7sUp6kZ-rLw", (40, 44), [
            _Region(3, (5, 15, 5, 15)), _Region(4, (20, 35, 10, 40)), _Region(1, (36, 40, 0, 44)),
        ]),
    ]
    colours = [label["color"] for label in MAPILLARY_LABELS]
    expected_images = []
    for seed, (key, size, regions) in enumerate(images):
        label_path = root / "mapillary" / "training" / "v2.0" / "labels" / f"{key}.png"
        expected, label = _label_map_image(
            root / "mapillary" / "training" / "images" / f"{key}.jpg",
            label_path,
            size,
            MAPILLARY_UNLABELED,
            regions,
            offset=0,
            seed=20 + seed,
        )
        write_palette_png(label_path, label, colours)
        expected_images.append(expected)
    class_names: list[ClassName] = [str(label["readable"]).lower() for label in MAPILLARY_LABELS]
    return {"train": ExpectedSource(class_names, expected_images)}


# ---------------------------------------------------------------------------------------------
# COCO-style json (PACO-LVIS, PASCAL-Part)


@dataclass(frozen=True)
class _Annotation:
    category_id: int
    segmentation: Any
    iscrowd: int = 0


def polygon(rect: Rect) -> list[float]:
    """A rectangle as a COCO polygon part ``[x1, y1, ...]``."""
    top, bottom, left, right = rect
    return [float(v) for v in (left, top, right, top, right, bottom, left, bottom)]


def _write_coco_json(
    json_path: Path,
    image_root: Path,
    categories: list[tuple[int, str, ClassName]],
    images: list[tuple[int, str, tuple[int, int], list[_Annotation]]],
    seed: int,
) -> ExpectedSource:
    """Write the images and the json. ``categories``: (id, name in the json, name a reader must
    parse it into). Expected targets for the images with a usable annotation."""
    by_id = sorted(categories, key=lambda category: category[0])
    class_of_category = {category_id: index for index, (category_id, _, _) in enumerate(by_id)}
    json_images, json_annotations, expected_images = [], [], []
    for image_id, file_name, (height, width), image_annotations in images:
        image_path = image_root / file_name
        write_jpeg(image_path, height, width, seed + image_id)
        json_images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
        expected = ExpectedImage(image_path, height, width, masks={})
        seen = set()
        for annotation in image_annotations:
            mask = decode_segmentation(annotation.segmentation, height, width)
            rows, cols = np.nonzero(mask)
            json_annotations.append(
                {
                    "id": len(json_annotations) + 1,
                    "image_id": image_id,
                    "category_id": annotation.category_id,
                    "segmentation": annotation.segmentation,
                    "area": int(mask.sum()),
                    "bbox": [int(cols.min()), int(rows.min()), int(np.ptp(cols)) + 1, int(np.ptp(rows)) + 1],
                    "iscrowd": annotation.iscrowd,
                }
            )
            class_id = class_of_category[annotation.category_id]
            seen.add(class_id)
            if not annotation.iscrowd:
                expected.masks[class_id] = expected.masks.get(class_id, np.zeros_like(mask)) | mask
        expected.unsure_class_ids = sorted(seen - set(expected.masks))
        if expected.masks:
            expected_images.append(expected)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    # Categories are written in the order given (not sorted by id), as a json may list them.
    json_categories = [{"id": category_id, "name": name} for category_id, name, _ in categories]
    data = {"images": json_images, "annotations": json_annotations, "categories": json_categories}
    json_path.write_text(json.dumps(data), encoding="utf-8")
    return ExpectedSource([parsed for _, _, parsed in by_id], expected_images)


def write_paco_lvis(root: Path) -> dict[str, ExpectedSource]:
    """``vlpart/paco/annotations/paco_lvis_v1_train.json``, images under ``coco/`` ("train2017/...").

    Image 139: two "mug" polygons (one class, their union), a "mug:handle" RLE, a crowd "glass"
    (unsure). Image 285: polygon and RLE parts. Image 632: crowd only; image 724: no annotation
    (both dropped). Category ids are neither contiguous nor listed in order.
    """
    categories: list[tuple[int, str, ClassName]] = [
        (23, "mug", "mug"),
        (5, "mug:handle", ("mug", "handle")),
        (41, "pan_(for_cooking):base", ("pan", "base")),
        (17, "trash_can:inner_body", ("trash_can", "inner_body")),
        (30, "glass_(drink_container)", "glass"),
    ]
    images = [
        (139, "train2017/000000000139.jpg", (40, 48), [
            _Annotation(23, [polygon((2, 18, 2, 20))]),
            _Annotation(23, [polygon((22, 38, 26, 46))]),
            _Annotation(5, encode_rle(rect_mask(40, 48, (5, 12, 20, 25)))),
            _Annotation(30, encode_rle(rect_mask(40, 48, (30, 40, 0, 10))), iscrowd=1),
        ]),
        (285, "train2017/000000000285.jpg", (44, 36), [
            _Annotation(17, [polygon((4, 20, 4, 30)), polygon((30, 40, 2, 12))]),
            _Annotation(41, encode_rle(rect_mask(44, 36, (22, 44, 20, 36)))),
        ]),
        (632, "train2017/000000000632.jpg", (32, 40), [
            _Annotation(30, encode_rle(rect_mask(32, 40, (0, 16, 0, 20))), iscrowd=1),
        ]),
        (724, "train2017/000000000724.jpg", (36, 30), []),
    ]
    json_path = root / "vlpart" / "paco" / "annotations" / "paco_lvis_v1_train.json"
    return {"train": _write_coco_json(json_path, root / "coco", categories, images, seed=30)}


def write_pascal_part(root: Path) -> dict[str, ExpectedSource]:
    """``vlpart/pascal_part/train.json``, images in ``vlpart/pascal_part/VOCdevkit/VOC2010/JPEGImages``."""
    categories: list[tuple[int, str, ClassName]] = [
        (84, "potted plant:pot", ("potted plant", "pot")),
        (1, "aeroplane:body", ("aeroplane", "body")),
        (2, "aeroplane:wing", ("aeroplane", "wing")),
        (71, "person:hair", ("person", "hair")),
    ]
    images = [
        (1, "2008_000002.jpg", (40, 56), [
            _Annotation(1, encode_rle(rect_mask(40, 56, (10, 30, 10, 46)))),
            _Annotation(2, [polygon((2, 9, 20, 36))]),
            _Annotation(2, [polygon((31, 38, 20, 36))]),
        ]),
        (2, "2008_000003.jpg", (48, 44), [
            _Annotation(71, [polygon((0, 10, 10, 30))]),
            _Annotation(84, encode_rle(rect_mask(48, 44, (30, 48, 0, 20)))),
        ]),
    ]
    pascal_part = root / "vlpart" / "pascal_part"
    image_root = pascal_part / "VOCdevkit" / "VOC2010" / "JPEGImages"
    return {"train": _write_coco_json(pascal_part / "train.json", image_root, categories, images, seed=40)}


def write_all_semseg(root: Path) -> dict[str, dict[str, ExpectedSource]]:
    """All five datasets under one root: dataset name -> split -> expected."""
    return {
        "ade20k": write_ade20k(root),
        "cocostuff": write_cocostuff(root),
        "mapillary": write_mapillary(root),
        "paco_lvis": write_paco_lvis(root),
        "pascal_part": write_pascal_part(root),
    }
