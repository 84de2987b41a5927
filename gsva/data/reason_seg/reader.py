"""Reader for the ReasonSeg reasoning-segmentation set.

Layout under a dataset root (the LISA/GSVA layout)::

    <root>/reason_seg/ReasonSeg/<split>/<name>.jpg     # split: train | val | test
    <root>/reason_seg/ReasonSeg/<split>/<name>.json    # one labelme-style annotation per image
    <root>/reason_seg/ReasonSeg/explanatory/train.json # explanations of some train images

An annotation holds ``"text"`` (a list of queries, or one query as a string), ``"is_sentence"``
(whether the queries are long sentences rather than short phrases) and ``"shapes"``: labelme
polygons ``{"label": ..., "points": [[x, y], ...], "shape_type": "polygon", ...}``. Other labelme
keys (``imagePath``, ``imageHeight``, ...) are not read. The explanatory file is a list of
``{"image": "<name>.jpg", "query": ..., "outputs": <explanation>}``.

How an annotation becomes a mask (the convention the published ground truth was drawn with):

* a shape labelled ``flag`` (any case) is a deprecated annotation and is skipped;
* a shape whose label contains ``ignore`` (any case) marks an ambiguous region, excluded from
  evaluation; every other label (``target`` in the released files) marks the target;
* each shape is rasterised as a closed polygon from ``"points"`` whatever its ``shape_type``:
  vertices truncated to integer pixels, interior filled and a 1-pixel outline drawn (8-connected),
  clipped to the image;
* shapes are painted largest area first (area = pixels of that rasterisation), so a smaller shape
  inside a larger one wins; among shapes of equal area the one later in the file is painted
  first. The target mask is the set of pixels whose final label is target, so an ``ignore``
  region inside a target is not target, and a target inside a larger ``ignore`` region is.

Decisions:

* images are the ``*.jpg`` files of the split folder, in sorted file-name order; each needs its
  ``.json`` beside it (a ``.json`` without an image is not read);
* annotations are read as UTF-8, falling back to cp1252 for files that are not valid UTF-8;
* ``"text"`` must be a string or a non-empty list of strings, ``"is_sentence"`` a bool, every
  shape a ``label`` string and ``points`` a non-empty list of finite ``[x, y]`` pairs;
* explanations belong to the train split only and are matched to an image by its file name;
  other splits never carry one and do not need the file. When an image appears several times in
  the explanatory file the last entry is kept; its ``query`` is not read.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from gsva.data.doctor import FileCheck, OpenedDataset, check_image

REASON_SEG_SPLITS = ("train", "val", "test")
EXPLAINED_SPLIT = "train"
FLAG_LABEL = "flag"
IGNORE_LABEL_PART = "ignore"

_BACKGROUND, _TARGET, _IGNORE = 0, 1, 255
"""Values of the painted label map."""


@dataclass(frozen=True)
class ReasonSegItem:
    """One image with its queries; ``explanation`` is the explanatory answer, if the image has one."""

    image_path: Path
    json_path: Path
    texts: list[str]
    is_sentence: bool
    explanation: str | None


@dataclass(frozen=True)
class Polygon:
    """One annotated shape: integer pixel ``vertices`` of shape ``(N, 2)`` as (x, y), int32."""

    vertices: np.ndarray
    ignore: bool


def reason_seg_dir(dataset_root: Path | str) -> Path:
    """Root of the ReasonSeg tree: ``<root>/reason_seg/ReasonSeg``."""
    return Path(dataset_root) / "reason_seg" / "ReasonSeg"


def split_dir(dataset_root: Path | str, split: str) -> Path:
    """Folder holding the images and annotations of ``split``."""
    return reason_seg_dir(dataset_root) / split


def explanations_path(dataset_root: Path | str) -> Path:
    """The explanatory answers of train images."""
    return reason_seg_dir(dataset_root) / "explanatory" / f"{EXPLAINED_SPLIT}.json"


class ReasonSegIndex:
    """Images of one ReasonSeg split with their queries; annotations parsed and checked at load."""

    def __init__(self, dataset_root: Path | str, split: str, load_explanations: bool = True) -> None:
        if split not in REASON_SEG_SPLITS:
            raise ValueError(
                f"unknown ReasonSeg split {split!r}; expected one of {', '.join(REASON_SEG_SPLITS)}"
            )
        self.split = split
        self.directory = split_dir(dataset_root, split)
        if not self.directory.is_dir():
            raise FileNotFoundError(f"ReasonSeg split folder not found, expected: {self.directory}")
        image_paths = sorted(path for path in self.directory.iterdir() if path.suffix == ".jpg")
        if not image_paths:
            raise ValueError(f"{self.directory}: no .jpg images in the ReasonSeg {split} split")
        explanations = (
            _read_explanations(explanations_path(dataset_root))
            if load_explanations and split == EXPLAINED_SPLIT
            else {}
        )

        self._items: list[ReasonSegItem] = []
        self._polygons: dict[Path, list[Polygon]] = {}
        for image_path in image_paths:
            json_path = image_path.with_suffix(".json")
            if not json_path.is_file():
                raise FileNotFoundError(f"annotation of {image_path} not found, expected: {json_path}")
            annotation = _read_annotation(json_path)
            self._items.append(
                ReasonSegItem(
                    image_path=image_path,
                    json_path=json_path,
                    texts=_parse_texts(annotation, json_path),
                    is_sentence=_parse_is_sentence(annotation, json_path),
                    explanation=explanations.get(image_path.name),
                )
            )
            self._polygons[json_path] = _parse_polygons(annotation, json_path)

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, index: int) -> ReasonSegItem:
        return self._items[index]

    def read_mask(self, item: ReasonSegItem, height: int, width: int) -> np.ndarray:
        """Target pixels of ``item``: bool ``(height, width)``."""
        return self._label_map(item, height, width) == _TARGET

    def _label_map(self, item: ReasonSegItem, height: int, width: int) -> np.ndarray:
        if item.json_path not in self._polygons:
            raise ValueError(
                f"{item.json_path} is not an annotation of the ReasonSeg {self.split} split read here"
            )
        return paint_labels(self._polygons[item.json_path], height, width)


def paint_labels(polygons: list[Polygon], height: int, width: int) -> np.ndarray:
    """Paint ``polygons`` largest first; uint8 ``(height, width)``: 0 background, 1 target, 255 ignore."""
    if height <= 0 or width <= 0:
        raise ValueError(f"mask size must be positive, got {height}x{width}")
    filled = [_rasterise(polygon.vertices, height, width) for polygon in polygons]
    # Descending (area, file position): the reverse of a stable ascending sort by area.
    order = sorted(range(len(polygons)), key=lambda index: (int(filled[index].sum()), index), reverse=True)
    labels = np.full((height, width), _BACKGROUND, dtype=np.uint8)
    for index in order:
        labels[filled[index]] = _IGNORE if polygons[index].ignore else _TARGET
    return labels


def _rasterise(vertices: np.ndarray, height: int, width: int) -> np.ndarray:
    """Closed polygon, interior and 1-pixel outline: bool ``(height, width)``."""
    canvas = np.zeros((height, width), dtype=np.uint8)
    cv2.fillPoly(canvas, [vertices], 1)
    cv2.polylines(canvas, [vertices], True, 1, 1)
    return canvas.astype(bool)


def _read_annotation(path: Path) -> dict[str, Any]:
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("cp1252")
    try:
        annotation = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from error
    if not isinstance(annotation, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(annotation).__name__}")
    return annotation


def _parse_texts(annotation: dict[str, Any], path: Path) -> list[str]:
    if "text" not in annotation:
        raise ValueError(f"{path}: missing field 'text' (the queries)")
    value = annotation["text"]
    texts = [value] if isinstance(value, str) else value
    if not isinstance(texts, list) or not texts or not all(isinstance(text, str) for text in texts):
        raise ValueError(f"{path}: 'text' must be a string or a non-empty list of strings, got {value!r}")
    return list(texts)


def _parse_is_sentence(annotation: dict[str, Any], path: Path) -> bool:
    value = annotation.get("is_sentence")
    if not isinstance(value, bool):
        raise ValueError(f"{path}: 'is_sentence' must be true or false, got {value!r}")
    return value


def _parse_polygons(annotation: dict[str, Any], path: Path) -> list[Polygon]:
    """The shapes that take part in the mask (``flag`` ones dropped), in file order."""
    if "shapes" not in annotation:
        raise ValueError(f"{path}: missing field 'shapes' (the polygons)")
    shapes = annotation["shapes"]
    if not isinstance(shapes, list):
        raise ValueError(f"{path}: 'shapes' must be a list, got {type(shapes).__name__}")
    polygons = []
    for position, shape in enumerate(shapes):
        where = f"{path} shape #{position}"
        if not isinstance(shape, dict) or not isinstance(shape.get("label"), str):
            raise ValueError(f"{where}: expected an object with a string 'label'")
        label = shape["label"].lower()
        if label == FLAG_LABEL:
            continue
        vertices = _parse_points(shape.get("points"), where)
        polygons.append(Polygon(vertices=vertices, ignore=IGNORE_LABEL_PART in label))
    return polygons


def _parse_points(points: Any, where: str) -> np.ndarray:
    """``[[x, y], ...]`` in pixels to int32 ``(N, 2)`` vertices, truncated toward zero."""
    expected = "'points' must be a non-empty list of finite [x, y] numbers"
    if not isinstance(points, list) or not points:
        raise ValueError(f"{where}: {expected}, got {points!r}")
    for point in points:
        if not (
            isinstance(point, list)
            and len(point) == 2
            and all(isinstance(value, (int, float)) and not isinstance(value, bool) for value in point)
        ):
            raise ValueError(f"{where}: {expected}, got the point {point!r}")
    vertices = np.asarray(points, dtype=np.float64)
    if not np.isfinite(vertices).all():
        raise ValueError(f"{where}: {expected}, got non-finite coordinates")
    return vertices.astype(np.int32)


def _read_explanations(path: Path) -> dict[str, str]:
    """Image file name -> explanation, from the explanatory file."""
    if not path.is_file():
        raise FileNotFoundError(
            f"ReasonSeg explanations not found, expected: {path} (pass load_explanations=False to go without)"
        )
    with path.open("r", encoding="utf-8") as handle:
        entries = json.load(handle)
    if not isinstance(entries, list):
        raise ValueError(f"{path}: expected a JSON list of explanations, got {type(entries).__name__}")
    explanations = {}
    for position, entry in enumerate(entries):
        fields = (entry.get("image"), entry.get("outputs")) if isinstance(entry, dict) else (None, None)
        if not all(isinstance(value, str) for value in fields):
            raise ValueError(f"{path} entry #{position}: expected an object with strings 'image' and 'outputs'")
        explanations[entry["image"]] = entry["outputs"]
    return explanations


def check_reason_seg(name: str, root: Path) -> OpenedDataset:
    """The dataset opened for the data doctor: its counts and every file training would read, each
    with the function that reads it as training would."""
    counts: dict[str, int] = {}
    files: list[FileCheck] = []
    for split in REASON_SEG_SPLITS:
        index = ReasonSegIndex(root, split)
        counts[f"{split}/images"] = len(index)
        counts[f"{split}/sentence_queries"] = sum(index[i].is_sentence for i in range(len(index)))
        if split == "train":
            counts["train/explained"] = sum(index[i].explanation is not None for i in range(len(index)))

        def check(index: ReasonSegIndex, item: int) -> Callable[[], None]:
            def run() -> None:
                height, width = check_image(index[item].image_path)
                index.read_mask(index[item], height, width)

            return run

        files.extend((index[i].image_path, check(index, i)) for i in range(len(index)))
    return OpenedDataset(counts, files)
