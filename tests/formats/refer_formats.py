"""Writers of tiny referring datasets in the on-disk formats of the real ones.

Each ``write_<dataset>(root)`` writes, under ``root`` in the LISA/GSVA layout,
four small JPEG images of distinct sizes, a COCO style ``instances.json`` and
the dataset's refs file, and returns a :class:`WrittenRefer` with what a test
checks against: the sentences of every split and the mask each one refers to.
Paths and file names are spelled out here, independently of the reader.

Every image holds the same four objects, shifted by the image's position:

* ``A``: a rectangle, written as a one-part polygon;
* ``B``: two rectangles, written as a two-part polygon;
* ``C``: a disk, written as compressed RLE (``counts`` a str);
* ``D``: an L shape, a crowd region written as uncompressed RLE (``counts`` a list).

RefCLEF writes every segmentation as a list of compressed RLE dicts, one per
part. An integer-vertex rectangle polygon ``(x0, y0, x1, y1)`` rasterises to
pixels ``[y0:y1, x0:x1]``, so every mask here is drawn independently of the
decoder.

Refs files: RefCOCO, RefCOCO+, RefCLEF (``refs(unc).p``) and RefCOCOg
(``refs(umd).p``) are Python 2 style pickles (protocol 2, ``str`` as
``BINSTRING``), one annotation id per ref; gRefCOCO is ``grefs(unc).json``
with ``ann_id`` lists and ``[-1]`` for no target; Ref-ZOM is ``Ref_ZOM.p``
(a Python 3 pickle) with ``ann_id`` lists and ``[]`` for no target.
"""

from __future__ import annotations

import json
import pickle
import struct
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from gsva.data.masks import encode_rle, encode_uncompressed_rle

COCO_IMAGES = Path("refer_seg/images/mscoco/images/train2014")
CLEF_IMAGES = Path("refer_seg/images/saiapr_tc-12")
# (width, height) of the four images; each dataset uses them in this order.
IMAGE_SIZES = ((40, 32), (36, 30), (44, 34), (38, 36))
CATEGORIES = ({"id": 1, "name": "person"}, {"id": 2, "name": "dog"}, {"id": 3, "name": "ball"})
# Object letter -> category id.
OBJECT_CATEGORIES = {"A": 1, "B": 2, "C": 3, "D": 1}
OBJECT_WORDS = {"A": "person", "B": "dog", "C": "ball"}
ABSENT_WORD = "cat"
PLACE_WORDS = ("on the left", "on the right", "at the top", "at the bottom")
# The first sentence of every dataset has a non-ASCII character (UTF-8 bytes in Python 2 pickles).
ACCENTED_PLACE = "near the café"
OBJECT_COLOURS = {"A": (220, 40, 40), "B": (40, 190, 60), "C": (50, 80, 230), "D": (230, 220, 50)}


@dataclass(frozen=True)
class ExpectedExpression:
    """One sentence as the reader must return it, with the mask it refers to (bool ``(H, W)``)."""

    split: str
    image_id: int
    ref_id: int
    sent_id: int
    text: str
    ann_ids: tuple[int, ...]
    mask: np.ndarray


@dataclass(frozen=True)
class WrittenRefer:
    """What a ``write_<dataset>`` function wrote."""

    dataset: str
    refs_file: Path
    instances_file: Path
    image_files: dict[int, Path]  # image id -> JPEG path
    object_masks: dict[int, np.ndarray]  # ann id -> bool (H, W) mask, crowd regions included
    crowd_ann_ids: tuple[int, ...]
    expressions: tuple[ExpectedExpression, ...]

    def splits(self) -> tuple[str, ...]:
        return tuple(sorted({expression.split for expression in self.expressions}))


@dataclass(frozen=True)
class _Dataset:
    """What differs between the fixture datasets."""

    name: str
    refs_file_name: str
    images_folder: Path
    splits: tuple[str, ...]  # split of image i: splits[i % len(splits)]
    ref_targets: tuple[tuple[str, ...], ...]  # object letters of each ref, the same on every image
    first_image_id: int
    ref_record: Callable[[dict[str, Any], tuple[int, ...], tuple[int, ...]], dict[str, Any]]
    write_refs: Callable[[Path, list[dict[str, Any]]], None]
    rle_parts: bool = False  # RefCLEF: segmentations as lists of compressed RLE dicts


def write_refcoco(root: Path) -> WrittenRefer:
    """RefCOCO: ``refs(unc).p``, splits train / val / testA / testB."""
    return _write(root, _classic("refcoco", "refs(unc).p", ("train", "val", "testA", "testB"), 1000))


def write_refcoco_plus(root: Path) -> WrittenRefer:
    """RefCOCO+: ``refs(unc).p``, splits train / val / testA / testB."""
    return _write(root, _classic("refcoco+", "refs(unc).p", ("train", "val", "testA", "testB"), 2000))


def write_refcocog(root: Path) -> WrittenRefer:
    """RefCOCOg, umd split: ``refs(umd).p``, splits train / val / test."""
    return _write(root, _classic("refcocog", "refs(umd).p", ("train", "val", "test"), 3000))


def write_refclef(root: Path) -> WrittenRefer:
    """RefCLEF: ``refs(unc).p``, images under ``saiapr_tc-12``, segmentations as RLE lists."""
    dataset = _classic("refclef", "refs(unc).p", ("train", "val", "test"), 4000)
    return _write(root, replace(dataset, images_folder=CLEF_IMAGES, rle_parts=True))


def write_grefcoco(root: Path) -> WrittenRefer:
    """gRefCOCO: ``grefs(unc).json``; single, multi (``[A, B]``) and no-target (``[-1]``) refs."""
    return _write(
        root,
        _Dataset(
            name="grefcoco",
            refs_file_name="grefs(unc).json",
            images_folder=COCO_IMAGES,
            splits=("train", "val", "testA", "testB"),
            ref_targets=(("A",), ("A", "B"), ()),
            first_image_id=5000,
            ref_record=_grefcoco_ref,
            write_refs=_write_json,
        ),
    )


def write_refzom(root: Path) -> WrittenRefer:
    """Ref-ZOM: ``Ref_ZOM.p``; single, multi (``[B, C]``) and no-target (``[]``) refs, splits train / test."""
    return _write(
        root,
        _Dataset(
            name="refzom",
            refs_file_name="Ref_ZOM.p",
            images_folder=COCO_IMAGES,
            splits=("train", "test"),
            ref_targets=(("C",), ("B", "C"), ()),
            first_image_id=6000,
            ref_record=_refzom_ref,
            write_refs=_write_python3_pickle,
        ),
    )


def write_all_refer(root: Path) -> dict[str, WrittenRefer]:
    """All six datasets under one root (image ids differ between datasets), by dataset name."""
    writers = (write_refcoco, write_refcoco_plus, write_refcocog, write_refclef, write_grefcoco, write_refzom)
    written = [writer(root) for writer in writers]
    return {item.dataset: item for item in written}


def python2_pickle(value: Any) -> bytes:
    """Pickle ``value`` as Python 2's cPickle did with protocol 2 (without memo opcodes).

    ``str`` is written as a Python 2 ``str`` holding its UTF-8 bytes and
    ``bytes`` as a Python 2 ``str`` holding those bytes (``SHORT_BINSTRING`` /
    ``BINSTRING``). Supports dict, list, tuple, str, bytes, int, float, bool and None.
    """
    return pickle.PROTO + b"\x02" + _python2_opcodes(value) + pickle.STOP


def _python2_opcodes(value: Any) -> bytes:
    if value is None:
        return pickle.NONE
    if isinstance(value, bool):
        return pickle.NEWTRUE if value else pickle.NEWFALSE
    if isinstance(value, int):
        return _python2_int(value)
    if isinstance(value, float):
        return pickle.BINFLOAT + struct.pack(">d", value)
    if isinstance(value, (str, bytes)):
        data = value.encode("utf-8") if isinstance(value, str) else value
        if len(data) < 256:
            return pickle.SHORT_BINSTRING + bytes([len(data)]) + data
        return pickle.BINSTRING + struct.pack("<i", len(data)) + data
    if isinstance(value, list):
        items = b"".join(_python2_opcodes(item) for item in value)
        return pickle.EMPTY_LIST + (pickle.MARK + items + pickle.APPENDS if value else b"")
    if isinstance(value, tuple):
        return pickle.MARK + b"".join(_python2_opcodes(item) for item in value) + pickle.TUPLE
    if isinstance(value, dict):
        items = b"".join(_python2_opcodes(key) + _python2_opcodes(item) for key, item in value.items())
        return pickle.EMPTY_DICT + (pickle.MARK + items + pickle.SETITEMS if value else b"")
    raise TypeError(f"python2_pickle: unsupported type {type(value).__name__}")


def _python2_int(value: int) -> bytes:
    if 0 <= value < 256:
        return pickle.BININT1 + bytes([value])
    if 0 <= value < 65536:
        return pickle.BININT2 + struct.pack("<H", value)
    if -(2**31) <= value < 2**31:
        return pickle.BININT + struct.pack("<i", value)
    data = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
    return pickle.LONG1 + bytes([len(data)]) + data


def _classic(name: str, refs_file_name: str, splits: tuple[str, ...], first_image_id: int) -> _Dataset:
    """A RefCOCO-family dataset: one ref per non-crowd object, Python 2 pickle."""
    return _Dataset(
        name=name,
        refs_file_name=refs_file_name,
        images_folder=COCO_IMAGES,
        splits=splits,
        ref_targets=(("A",), ("B",), ("C",)),
        first_image_id=first_image_id,
        ref_record=_classic_ref,
        write_refs=_write_python2_pickle,
    )


def _classic_ref(base: dict[str, Any], ann_ids: tuple[int, ...], category_ids: tuple[int, ...]) -> dict[str, Any]:
    (ann_id,) = ann_ids
    return {**base, "ann_id": ann_id, "category_id": category_ids[0]}


def _grefcoco_ref(base: dict[str, Any], ann_ids: tuple[int, ...], category_ids: tuple[int, ...]) -> dict[str, Any]:
    no_target = len(ann_ids) == 0
    return {
        **base,
        "ann_id": [-1] if no_target else list(ann_ids),
        "category_id": [-1] if no_target else list(category_ids),
        "no_target": no_target,
    }


def _refzom_ref(base: dict[str, Any], ann_ids: tuple[int, ...], category_ids: tuple[int, ...]) -> dict[str, Any]:
    source = "zero" if not ann_ids else "one" if len(ann_ids) == 1 else "many"
    return {**base, "ann_id": list(ann_ids), "category_id": list(category_ids), "source": source}


def _write(root: Path, dataset: _Dataset) -> WrittenRefer:
    """Draw the images, write them, ``instances.json`` and the refs file; return the expectations."""
    annotation_folder = root / "refer_seg" / dataset.name
    annotation_folder.mkdir(parents=True, exist_ok=True)
    images, annotations, refs = [], [], []
    image_files: dict[int, Path] = {}
    object_masks: dict[int, np.ndarray] = {}
    crowd_ann_ids: list[int] = []
    expressions: list[ExpectedExpression] = []
    next_ref_id, next_sent_id = 1, 1
    for position, (width, height) in enumerate(IMAGE_SIZES):
        image_id = dataset.first_image_id + position
        split = dataset.splits[position % len(dataset.splits)]
        file_name = _image_file_name(dataset, image_id)
        parts = _object_parts(position, height, width)
        ann_ids = {letter: image_id * 10 + index for index, letter in enumerate(parts)}
        masks = {letter: np.logical_or.reduce(letter_parts) for letter, letter_parts in parts.items()}

        image_files[image_id] = root / dataset.images_folder / file_name
        _write_jpeg(image_files[image_id], _paint(masks, height, width))
        images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
        for letter, letter_parts in parts.items():
            crowd = letter == "D"
            annotations.append(_annotation(ann_ids[letter], image_id, letter, letter_parts, crowd, dataset.rle_parts))
            object_masks[ann_ids[letter]] = masks[letter]
            if crowd:
                crowd_ann_ids.append(ann_ids[letter])

        for ref_position, targets in enumerate(dataset.ref_targets):
            target_ids = tuple(ann_ids[letter] for letter in targets)
            place = ACCENTED_PLACE if position == ref_position == 0 else PLACE_WORDS[position]
            sentences = _sentences(targets, place)
            sent_ids = list(range(next_sent_id, next_sent_id + len(sentences)))
            base = {
                "ref_id": next_ref_id,
                "image_id": image_id,
                "split": split,
                "file_name": f"{Path(file_name).stem}_{next_ref_id}.jpg",
                "sent_ids": sent_ids,
                "sentences": [
                    {"tokens": text.split(), "raw": raw, "sent_id": sent_id, "sent": text}
                    for (text, raw), sent_id in zip(sentences, sent_ids)
                ],
            }
            category_ids = tuple(OBJECT_CATEGORIES[letter] for letter in targets)
            refs.append(dataset.ref_record(base, target_ids, category_ids))
            target_mask = np.zeros((height, width), dtype=bool)
            for letter in targets:
                target_mask |= masks[letter]
            expressions.extend(
                ExpectedExpression(split, image_id, next_ref_id, sent_id, text, target_ids, target_mask)
                for (text, _), sent_id in zip(sentences, sent_ids)
            )
            next_ref_id += 1
            next_sent_id += len(sentences)

    instances = {"images": images, "annotations": annotations, "categories": [dict(cat) for cat in CATEGORIES]}
    instances_file = annotation_folder / "instances.json"
    _write_json(instances_file, instances)
    refs_file = annotation_folder / dataset.refs_file_name
    dataset.write_refs(refs_file, refs)
    return WrittenRefer(
        dataset=dataset.name,
        refs_file=refs_file,
        instances_file=instances_file,
        image_files=image_files,
        object_masks=object_masks,
        crowd_ann_ids=tuple(crowd_ann_ids),
        expressions=tuple(expressions),
    )


def _image_file_name(dataset: _Dataset, image_id: int) -> str:
    if dataset.images_folder == CLEF_IMAGES:
        return f"{image_id // 1000:02d}/images/{image_id}.jpg"
    return f"COCO_train2014_{image_id:012d}.jpg"


def _object_parts(shift: int, height: int, width: int) -> dict[str, list[np.ndarray]]:
    """Bool masks of the parts of objects A-D, shifted right and down by ``shift`` pixels."""

    def rectangle(x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        mask = np.zeros((height, width), dtype=bool)
        mask[y0 + shift : y1 + shift, x0 + shift : x1 + shift] = True
        return mask

    disk = np.zeros((height, width), dtype=np.uint8)
    cv2.circle(disk, (8 + shift, 19 + shift), 5, color=1, thickness=-1)
    return {
        "A": [rectangle(2, 3, 10, 9)],
        "B": [rectangle(14, 2, 19, 7), rectangle(22, 16, 30, 24)],
        "C": [disk.astype(bool)],
        "D": [rectangle(12, 20, 20, 27) | rectangle(12, 10, 15, 20)],
    }


def _annotation(
    ann_id: int, image_id: int, letter: str, parts: list[np.ndarray], crowd: bool, rle_parts: bool
) -> dict[str, Any]:
    mask = np.logical_or.reduce(parts)
    rows, cols = np.nonzero(mask)
    if rle_parts:
        segmentation: Any = [encode_rle(part) for part in parts]
    elif letter in ("A", "B"):
        segmentation = [_rectangle_polygon(part) for part in parts]
    elif crowd:
        segmentation = encode_uncompressed_rle(mask)
    else:
        segmentation = encode_rle(mask)
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": OBJECT_CATEGORIES[letter],
        "segmentation": segmentation,
        "area": float(mask.sum()),
        "bbox": [float(cols.min()), float(rows.min()), float(np.ptp(cols) + 1), float(np.ptp(rows) + 1)],
        "iscrowd": int(crowd),
    }


def _rectangle_polygon(part: np.ndarray) -> list[float]:
    """The polygon ``[x0, y0, x1, y0, x1, y1, x0, y1]`` that rasterises to the rectangle ``part``."""
    rows, cols = np.nonzero(part)
    x0, y0, x1, y1 = float(cols.min()), float(rows.min()), float(cols.max() + 1), float(rows.max() + 1)
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def _sentences(targets: tuple[str, ...], place: str) -> list[tuple[str, str]]:
    """``(sent, raw)`` pairs of a ref: two sentences for single-target refs, one otherwise."""
    noun = " and ".join(OBJECT_WORDS[letter] for letter in targets) if targets else ABSENT_WORD
    sentences = [(f"{noun} {place}", f"{noun.capitalize()} {place}.")]
    if len(targets) == 1:
        sentences.append((f"the {noun} {place}", f"The {noun} {place}"))
    return sentences


def _paint(masks: dict[str, np.ndarray], height: int, width: int) -> np.ndarray:
    """RGB ``(H, W, 3)`` image: grey background, each object in its colour."""
    image = np.full((height, width, 3), 70, dtype=np.uint8)
    for letter, mask in masks.items():
        image[mask] = OBJECT_COLOURS[letter]
    return image


def _write_jpeg(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write JPEG image {path}")


def _write_json(path: Path, payload: Any) -> None:
    path.write_text(json.dumps(payload), encoding="utf-8")


def _write_python2_pickle(path: Path, refs: list[dict[str, Any]]) -> None:
    path.write_bytes(python2_pickle(refs))


def _write_python3_pickle(path: Path, refs: list[dict[str, Any]]) -> None:
    path.write_bytes(pickle.dumps(refs))
