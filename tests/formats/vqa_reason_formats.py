"""Small LLaVA-Instruct and ReasonSeg trees in the LISA/GSVA layout, written as the released files
are, with the values a correct reader returns (stated by hand, independent of the readers).

ReasonSeg shapes are axis-aligned rectangles, so their pixels are plain slices: a rectangle with
corners (x0, y0), (x1, y1) covers columns ``int(x0)..int(x1)`` and rows ``int(y0)..int(y1)``,
both ends included (interior plus outline, vertices truncated).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

IMAGE_HEIGHT, IMAGE_WIDTH = 48, 64
LLAVA_FILE_NAME = "llava_instruct_150k.json"


@dataclass(frozen=True)
class ExpectedVqaRecord:
    record_id: str
    image_name: str
    turns: list[tuple[str, str]]


@dataclass(frozen=True)
class ExpectedReasonItem:
    """What the reader must give for one image; ``target`` and ``ignore`` are bool ``(H, W)``."""

    name: str
    texts: list[str]
    is_sentence: bool
    explanation: str | None
    target: np.ndarray
    ignore: np.ndarray


def write_jpeg(path: Path, seed: int) -> None:
    """A noisy BGR ``(IMAGE_HEIGHT, IMAGE_WIDTH, 3)`` JPEG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (IMAGE_HEIGHT, IMAGE_WIDTH, 3), dtype=np.uint8)
    if not cv2.imwrite(str(path), pixels):
        raise OSError(f"could not write {path}")


def write_json(path: Path, payload: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1), encoding="utf-8")


# ----------------------------------------------------------------------------- LLaVA-Instruct


def _message(role: str, value: str) -> dict[str, str]:
    return {"from": role, "value": value}


# Three records as the released file has them: numeric string ids, COCO file names, the
# placeholder at the start ("<image>\n...") or at the end ("...\n<image>") of the first question.
LLAVA_RECORDS: list[dict[str, Any]] = [
    {
        "id": "000000215677",
        "image": "000000215677.jpg",
        "conversations": [
            _message("human", "What trick is the skateboarder doing?\n<image>"),
            _message("gpt", "He is jumping off a ramp."),
            _message("human", "Is he wearing a helmet?"),
            _message("gpt", "No, his head is bare."),
        ],
    },
    {
        "id": "000000033471",
        "image": "000000033471.jpg",
        "conversations": [
            _message("human", "<image>\nWhich colours does the bus have?"),
            _message("gpt", "White with a red stripe."),
            _message("human", "Where is it parked?\nAnswer briefly."),
            _message("gpt", "At a kerb beside a shop."),
            _message("human", "How many doors can you see?"),
            _message("gpt", "Two."),
        ],
    },
    {
        "id": "000000581921",
        "image": "000000581921.jpg",
        "conversations": [
            _message("human", "Describe the scene in detail.\n<image>"),
            _message("gpt", "A kitchen with a kettle on the stove\nand a cat on the floor."),
        ],
    },
]

EXPECTED_VQA_RECORDS = [
    ExpectedVqaRecord(
        "000000215677",
        "000000215677.jpg",
        [
            ("<image>\nWhat trick is the skateboarder doing?", "He is jumping off a ramp."),
            ("Is he wearing a helmet?", "No, his head is bare."),
        ],
    ),
    ExpectedVqaRecord(
        "000000033471",
        "000000033471.jpg",
        [
            ("<image>\nWhich colours does the bus have?", "White with a red stripe."),
            ("Where is it parked?\nAnswer briefly.", "At a kerb beside a shop."),
            ("How many doors can you see?", "Two."),
        ],
    ),
    ExpectedVqaRecord(
        "000000581921",
        "000000581921.jpg",
        [("<image>\nDescribe the scene in detail.", "A kitchen with a kettle on the stove\nand a cat on the floor.")],
    ),
]


def write_llava_records(root: Path, records: Any) -> Path:
    """Write ``records`` (normally a list of record objects) as ``<root>/llava_dataset/llava_instruct_150k.json``; return its path."""
    path = root / "llava_dataset" / LLAVA_FILE_NAME
    write_json(path, records)
    return path


def write_llava_instruct(root: Path) -> list[ExpectedVqaRecord]:
    """Write :data:`LLAVA_RECORDS` and their images; return the records a reader must give."""
    write_llava_records(root, LLAVA_RECORDS)
    for seed, record in enumerate(LLAVA_RECORDS):
        write_jpeg(root / "coco" / "train2017" / record["image"], seed)
    return list(EXPECTED_VQA_RECORDS)


# ----------------------------------------------------------------------------------- ReasonSeg


@dataclass(frozen=True)
class _Rect:
    label: str
    x0: float
    y0: float
    x1: float
    y1: float

    def shape_json(self) -> dict[str, Any]:
        corners = [[self.x0, self.y0], [self.x1, self.y0], [self.x1, self.y1], [self.x0, self.y1]]
        return {"label": self.label, "points": corners, "group_id": None, "shape_type": "polygon", "flags": {}}

    def pixels(self) -> np.ndarray:
        """Bool ``(H, W)`` of the rectangle's pixels."""
        mask = np.zeros((IMAGE_HEIGHT, IMAGE_WIDTH), dtype=bool)
        mask[int(self.y0) : int(self.y1) + 1, int(self.x0) : int(self.x1) + 1] = True
        return mask


@dataclass(frozen=True)
class _ReasonImage:
    split: str
    name: str
    text: str | list[str]
    is_sentence: bool
    shapes: list[_Rect]
    # Final labels, as unions and differences of the shapes' pixels (bool (H, W)).
    expected_target: np.ndarray
    expected_ignore: np.ndarray


# Shapes per image, in file order, and the final labels worked out by hand:
#   b_kitchen: a small ignore inside a big target -> a hole in the target; a whole-image "flag"
#              (deprecated) that must not count.
#   a_street:  a small target inside a big ignore -> stays target (smaller is painted later); a
#              separate target with fractional vertices (truncated).
#   val_01:    target and ignore of equal area overlapping: the earlier in the file (ignore)
#              is painted last and owns the overlap.
#   val_02:    one target, "text" a plain string.
#   test_01:   target only; test_02: no shapes at all (empty mask).
_KITCHEN_HOLE = _Rect("ignore", 20, 10, 30, 20)
_KITCHEN_TARGET = _Rect("target", 5, 5, 50, 40)
_KITCHEN_FLAG = _Rect("flag", 0, 0, IMAGE_WIDTH - 1, IMAGE_HEIGHT - 1)
_STREET_SMALL = _Rect("target", 30, 20, 36, 26)
_STREET_IGNORE = _Rect("ignore", 25, 15, 45, 35)
_STREET_SEPARATE = _Rect("target", 2.7, 2.2, 10.9, 12.6)
_VAL_IGNORE = _Rect("ignore", 10, 10, 19, 19)
_VAL_TARGET = _Rect("target", 15, 15, 24, 24)
_VAL2_TARGET = _Rect("target", 40, 5, 60, 30)
_TEST_TARGET = _Rect("target", 0, 30, 63, 47)
_NONE = np.zeros((IMAGE_HEIGHT, IMAGE_WIDTH), dtype=bool)

_REASON_IMAGES = [
    # Written out of name order: readers must sort.
    _ReasonImage(
        "train", "b_kitchen.jpg", ["the thing you boil water in", "what makes tea water hot"], True,
        [_KITCHEN_HOLE, _KITCHEN_TARGET, _KITCHEN_FLAG],
        _KITCHEN_TARGET.pixels() & ~_KITCHEN_HOLE.pixels(),
        _KITCHEN_HOLE.pixels(),
    ),
    _ReasonImage(
        "train", "a_street.jpg", ["traffic light"], False,
        [_STREET_SMALL, _STREET_IGNORE, _STREET_SEPARATE],
        _STREET_SMALL.pixels() | _STREET_SEPARATE.pixels(),
        _STREET_IGNORE.pixels() & ~_STREET_SMALL.pixels(),
    ),
    _ReasonImage(
        "val", "val_01.jpg", ["something to sit on"], True,
        [_VAL_IGNORE, _VAL_TARGET],
        _VAL_TARGET.pixels() & ~_VAL_IGNORE.pixels(),
        _VAL_IGNORE.pixels(),
    ),
    _ReasonImage(
        "val", "val_02.jpg", "the animal that guards the house", True,
        [_VAL2_TARGET],
        _VAL2_TARGET.pixels(),
        _NONE,
    ),
    _ReasonImage(
        "test", "test_01.jpg", ["floor", "ground"], False,
        [_TEST_TARGET],
        _TEST_TARGET.pixels(),
        _NONE,
    ),
    _ReasonImage(
        "test", "test_02.jpg", ["a unicorn"], False,
        [],
        _NONE,
        _NONE,
    ),
]

KITCHEN_EXPLANATION = "The kettle on the stove boils water, so it is what makes the tea water hot."

# "query" repeats one of the image's queries; the entry for an image outside the splits is unused.
_EXPLANATIONS = [
    {"image": "b_kitchen.jpg", "query": "what makes tea water hot", "outputs": KITCHEN_EXPLANATION},
    {"image": "not_in_any_split.jpg", "query": "anything", "outputs": "Never matched."},
]


def _annotation(image: _ReasonImage) -> dict[str, Any]:
    """The labelme-style annotation of ``image`` with the query fields."""
    return {
        "version": "4.5.6",
        "flags": {},
        "shapes": [shape.shape_json() for shape in image.shapes],
        "imagePath": image.name,
        "imageData": None,
        "imageHeight": IMAGE_HEIGHT,
        "imageWidth": IMAGE_WIDTH,
        "text": image.text,
        "is_sentence": image.is_sentence,
    }


def write_reason_seg(root: Path, with_explanations: bool = True) -> dict[str, list[ExpectedReasonItem]]:
    """Write train/val/test (two images each) and ``explanatory/train.json``.

    Returns, per split, the items a reader must give, sorted by image name.
    """
    base = root / "reason_seg" / "ReasonSeg"
    expected: dict[str, list[ExpectedReasonItem]] = {}
    for seed, image in enumerate(_REASON_IMAGES):
        write_jpeg(base / image.split / image.name, seed)
        write_json((base / image.split / image.name).with_suffix(".json"), _annotation(image))
        explanation = KITCHEN_EXPLANATION if image.name == "b_kitchen.jpg" and with_explanations else None
        expected.setdefault(image.split, []).append(
            ExpectedReasonItem(
                name=image.name,
                texts=[image.text] if isinstance(image.text, str) else list(image.text),
                is_sentence=image.is_sentence,
                explanation=explanation,
                target=image.expected_target.copy(),
                ignore=image.expected_ignore.copy(),
            )
        )
    if with_explanations:
        write_json(base / "explanatory" / "train.json", _EXPLANATIONS)
    return {split: sorted(items, key=lambda item: item.name) for split, items in expected.items()}
