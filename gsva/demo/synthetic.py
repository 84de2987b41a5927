"""Deterministic writer of a small synthetic generalized-referring dataset.

Images show coloured shapes (circle, square, triangle) on a noisy grey
background; each expression names one colour ("red shapes") or a pair of
colours ("red and blue"). An expression refers to every object of its
colour(s): none (no-target), one (single) or several (multi). The dataset is
written in the gRefCOCO on-disk format, so :class:`gsva.data.refer_seg.reader.ReferIndex`
reads it like the real one.

Everything is reproducible bit for bit: each split draws from its own
``np.random.default_rng([seed, split_index])``, so the same spec always gives
the same JSON and the same JPEG bytes.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from gsva.data.refer_seg.reader import (
    EXPRESSION_KINDS,
    NO_TARGET_ANN_ID,
    expression_kind,
    images_dir,
    instances_path,
    refs_path,
)
from gsva.atomic import write_bytes_atomic, write_text_atomic
from gsva.config_demo import COLOURS, SPLITS, SyntheticSpec
from gsva.data.masks import decode_segmentation, encode_rle, encode_uncompressed_rle

SHAPES = ("circle", "square", "triangle")

DATASET_NAME = "grefcoco"
SPLIT_BY = "unc"
IMAGE_FILE_PATTERN = "COCO_train2014_%012d.jpg"
ATTRIBUTES_FILE_NAME = "synthetic_attributes.json"

SINGLE_COLOUR_TEMPLATES = ("{c}", "{c} shapes", "{c} objects", "anything {c}")
PAIR_TEMPLATES = ("{c1} and {c2}", "{c1} and {c2} shapes")

BACKGROUND_GREY_RANGE = (40, 90)
BACKGROUND_NOISE_SIGMA = 6.0
COLOUR_JITTER = 15
CIRCLE_VERTICES = 24
PLACEMENT_TRIES = 100
# Pixels kept free between the bounding boxes of two objects.
OBJECT_GAP = 1
JPEG_QUALITY = 95
# Annotation segmentation forms cycled through by the "mixed" format.
MIXED_FORMAT_CYCLE = ("polygon", "compressed_rle", "uncompressed_rle")


@dataclass(frozen=True, eq=False)
class SyntheticObject:
    """One painted object. ``mask`` is bool ``(H, W)``, the rasterised ``polygon``."""

    ann_id: int
    colour: str
    shape: str
    mask: np.ndarray
    polygon: tuple[float, ...]  # flat [x1, y1, x2, y2, ...] in pixels


@dataclass(frozen=True)
class SyntheticRef:
    """One ref with its single sentence; ``ann_ids`` is ``()`` for a no-target ref."""

    ref_id: int
    sent_id: int
    sentence: str
    ann_ids: tuple[int, ...]


@dataclass(frozen=True, eq=False)
class SyntheticImage:
    """A generated image (uint8 ``(H, W, 3)`` RGB) with its objects and refs (global ids)."""

    split: str
    image_id: int
    image: np.ndarray
    objects: tuple[SyntheticObject, ...]
    refs: tuple[SyntheticRef, ...]


def attributes_path(dataset_root: Path | str) -> Path:
    """Path of the per-object attribute file, which doubles as the dataset's meta file."""
    return Path(dataset_root) / "refer_seg" / DATASET_NAME / ATTRIBUTES_FILE_NAME


def render_image(rng: np.random.Generator, spec: SyntheticSpec) -> tuple[np.ndarray, list[SyntheticObject]]:
    """Draw one image: uint8 ``(H, W, 3)`` RGB and its objects (``ann_id`` = 0-based local index).

    Objects never share a pixel: their bounding boxes are at least
    ``OBJECT_GAP`` pixels apart. Each object is painted from the mask decoded
    from its own polygon, so decoding the polygon gives exactly its pixels.
    """
    size = spec.image_size
    grey = int(rng.integers(BACKGROUND_GREY_RANGE[0], BACKGROUND_GREY_RANGE[1] + 1))
    noise = rng.normal(0.0, BACKGROUND_NOISE_SIGMA, size=(size, size, 3))
    image = np.clip(np.rint(grey + noise), 0, 255).astype(np.uint8)

    boxes = _place_boxes(rng, spec)
    objects: list[SyntheticObject] = []
    used_colours: list[str] = []
    for local_id, (x, y, side) in enumerate(boxes):
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        colour = _draw_colour(rng, spec, used_colours)
        used_colours.append(colour)
        polygon = _shape_polygon(rng, shape, x, y, side)
        mask = decode_segmentation([list(polygon)], size, size)
        jitter = rng.integers(-COLOUR_JITTER, COLOUR_JITTER + 1, size=3)
        image[mask] = np.clip(np.array(COLOURS[colour]) + jitter, 0, 255).astype(np.uint8)
        objects.append(SyntheticObject(ann_id=local_id, colour=colour, shape=shape, mask=mask, polygon=polygon))
    return image, objects


def generate_dataset(spec: SyntheticSpec) -> Iterator[SyntheticImage]:
    """Yield every image of every split, in ``SPLITS`` order, with global ids.

    Image, annotation, ref and sentence ids are unique across the dataset and
    start at 1 (one sentence per ref, so a ref's sent id equals its ref id).
    """
    next_image_id, next_ann_id, next_ref_id = 1, 1, 1
    for split_index, split in enumerate(SPLITS):
        rng = np.random.default_rng([spec.seed, split_index])
        for _ in range(spec.num_images.get(split, 0)):
            image, local_objects = render_image(rng, spec)
            objects = tuple(replace(obj, ann_id=next_ann_id + obj.ann_id) for obj in local_objects)
            refs = []
            for sentence, ann_ids in _draw_expressions(rng, spec, objects):
                refs.append(
                    SyntheticRef(ref_id=next_ref_id, sent_id=next_ref_id, sentence=sentence, ann_ids=ann_ids)
                )
                next_ref_id += 1
            yield SyntheticImage(
                split=split, image_id=next_image_id, image=image, objects=objects, refs=tuple(refs)
            )
            next_image_id += 1
            next_ann_id += len(objects)


def synthetic_dataset_exists(dataset_root: Path | str, spec: SyntheticSpec) -> bool:
    """True when a complete dataset written from ``spec`` is at ``dataset_root``.

    The meta file is written last, so an interrupted write reads as absent.
    Raises ``ValueError`` when a complete dataset from a different spec is there.
    """
    meta_file = attributes_path(dataset_root)
    if not meta_file.is_file():
        return False
    with meta_file.open("r", encoding="utf-8") as handle:
        stored_spec = json.load(handle).get("spec")
    requested_spec = _spec_as_json(spec)
    if stored_spec != requested_spec:
        stored_fields = stored_spec if isinstance(stored_spec, dict) else {}
        differences = {
            name: f"stored {stored_fields.get(name)!r}, requested {value!r}"
            for name, value in requested_spec.items()
            if stored_fields.get(name) != value
        }
        raise ValueError(
            f"{meta_file}: a synthetic dataset with a different spec exists at {dataset_root} "
            f"({differences or 'unreadable stored spec'}); delete the folder or choose another path"
        )
    return True


def write_synthetic_grefcoco(dataset_root: Path | str, spec: SyntheticSpec) -> dict[str, dict[str, Any]]:
    """Write the dataset under ``dataset_root`` in the gRefCOCO layout.

    Returns per split ``{"images": int, "objects": int, "expressions": {kind: int}}``
    with kinds ``"single"``, ``"multi"``, ``"no-target"``. Refuses (ValueError)
    to overwrite a dataset written from a different spec.
    """
    root = Path(dataset_root)
    synthetic_dataset_exists(root, spec)
    meta_file = attributes_path(root)
    meta_file.unlink(missing_ok=True)
    image_folder = images_dir(root)
    image_folder.mkdir(parents=True, exist_ok=True)

    stats = {
        split: {"images": 0, "objects": 0, "expressions": dict.fromkeys(EXPRESSION_KINDS, 0)}
        for split in SPLITS
    }
    refs: list[dict[str, Any]] = []
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    attributes: dict[str, list[dict[str, Any]]] = {}
    for item in generate_dataset(spec):
        file_name = IMAGE_FILE_PATTERN % item.image_id
        _write_jpeg(image_folder / file_name, item.image)
        images.append(
            {"id": item.image_id, "file_name": file_name, "height": spec.image_size, "width": spec.image_size}
        )
        annotations.extend(_annotation_json(obj, item.image_id, spec.segmentation_format) for obj in item.objects)
        refs.extend(_ref_json(ref, item, file_name) for ref in item.refs)
        attributes[str(item.image_id)] = [
            {"ann_id": obj.ann_id, "colour": obj.colour, "shape": obj.shape} for obj in item.objects
        ]
        split_stats = stats[item.split]
        split_stats["images"] += 1
        split_stats["objects"] += len(item.objects)
        for ref in item.refs:
            split_stats["expressions"][expression_kind(len(ref.ann_ids))] += 1

    categories = [
        {"id": _category_id(shape), "name": shape, "supercategory": "shape"} for shape in SHAPES
    ]
    _write_json(refs_path(root, DATASET_NAME, SPLIT_BY), refs)
    _write_json(
        instances_path(root, DATASET_NAME),
        {"images": images, "annotations": annotations, "categories": categories},
    )
    _write_json(meta_file, {"spec": _spec_as_json(spec), "images": attributes})
    return stats


def _place_boxes(rng: np.random.Generator, spec: SyntheticSpec) -> list[tuple[int, int, int]]:
    """Square boxes ``(x, y, side)`` with pairwise gaps; fewer than drawn if placement fails, never 0.

    Each object gets ``PLACEMENT_TRIES`` candidate boxes drawn at once; the
    first candidate clear of the boxes already placed is kept.
    """
    num_objects = int(rng.integers(spec.min_objects, spec.max_objects + 1))
    placed = np.empty((0, 3), dtype=np.int64)
    for _ in range(num_objects):
        sides = rng.integers(spec.min_object_size, spec.max_object_size + 1, size=PLACEMENT_TRIES)
        position_ranges = (spec.image_size - sides + 1)[:, None]
        corners = np.floor(rng.random((PLACEMENT_TRIES, 2)) * position_ranges).astype(np.int64)
        candidates = np.column_stack([corners, sides])
        clear = ~_boxes_too_close(candidates[:, None, :], placed[None, :, :]).any(axis=1)
        if not clear.any():
            break
        placed = np.vstack([placed, candidates[int(np.argmax(clear))]])
    return [(int(x), int(y), int(side)) for x, y, side in placed]


def _boxes_too_close(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Whether boxes ``(..., 3)`` int arrays of ``(x, y, side)`` come within ``OBJECT_GAP`` pixels (broadcast)."""
    x1, y1, s1 = first[..., 0], first[..., 1], first[..., 2]
    x2, y2, s2 = second[..., 0], second[..., 1], second[..., 2]
    apart_x = (x1 + s1 + OBJECT_GAP <= x2) | (x2 + s2 + OBJECT_GAP <= x1)
    apart_y = (y1 + s1 + OBJECT_GAP <= y2) | (y2 + s2 + OBJECT_GAP <= y1)
    return ~(apart_x | apart_y)


def _draw_colour(rng: np.random.Generator, spec: SyntheticSpec, used_colours: list[str]) -> str:
    """Re-use an image colour with ``repeat_colour_prob``, else take an unused palette colour."""
    unused = [name for name in spec.colours if name not in used_colours]
    repeat = bool(used_colours) and rng.random() < spec.repeat_colour_prob
    pool = sorted(set(used_colours), key=spec.colours.index) if repeat or not unused else unused
    return pool[int(rng.integers(len(pool)))]


def _shape_polygon(rng: np.random.Generator, shape: str, x: int, y: int, side: int) -> tuple[float, ...]:
    """Flat polygon inside the box ``[x, x + side] x [y, y + side]``, rounded to 0.01 px."""
    if shape == "square":
        corners = [(x, y), (x + side, y), (x + side, y + side), (x, y + side)]
        return tuple(float(value) for corner in corners for value in corner)
    if shape == "circle":
        angles = np.linspace(0.0, 2.0 * np.pi, CIRCLE_VERTICES, endpoint=False)
    elif shape == "triangle":
        angles = rng.uniform(0.0, 2.0 * np.pi) + np.array([0.0, 2.0, 4.0]) * np.pi / 3.0
    else:
        raise ValueError(f"shape: expected one of {SHAPES}, got {shape!r}")
    radius = side / 2.0
    vertices = np.column_stack([x + radius + radius * np.cos(angles), y + radius + radius * np.sin(angles)])
    return tuple(np.round(vertices, 2).ravel().tolist())


def _draw_expressions(
    rng: np.random.Generator, spec: SyntheticSpec, objects: tuple[SyntheticObject, ...]
) -> list[tuple[str, tuple[int, ...]]]:
    """Sentences with their target ann ids, in random order.

    One per present colour, maybe one for an absent colour, maybe one for a
    pair of colours. Present and absent colours use the same templates.
    """
    ann_ids_by_colour: dict[str, list[int]] = {}
    for obj in objects:
        ann_ids_by_colour.setdefault(obj.colour, []).append(obj.ann_id)
    present = [name for name in spec.colours if name in ann_ids_by_colour]
    absent = [name for name in spec.colours if name not in ann_ids_by_colour]

    expressions = [(_single_colour_sentence(rng, name), tuple(ann_ids_by_colour[name])) for name in present]
    if rng.random() < spec.absent_expression_prob and absent:
        name = absent[int(rng.integers(len(absent)))]
        expressions.append((_single_colour_sentence(rng, name), ()))
    if rng.random() < spec.pair_expression_prob:
        pair_indices = rng.choice(len(spec.colours), size=2, replace=False)
        first, second = (spec.colours[int(index)] for index in pair_indices)
        template = PAIR_TEMPLATES[int(rng.integers(len(PAIR_TEMPLATES)))]
        targets = sorted(ann_ids_by_colour.get(first, []) + ann_ids_by_colour.get(second, []))
        expressions.append((template.format(c1=first, c2=second), tuple(targets)))
    order = rng.permutation(len(expressions))
    return [expressions[int(index)] for index in order]


def _single_colour_sentence(rng: np.random.Generator, colour: str) -> str:
    return SINGLE_COLOUR_TEMPLATES[int(rng.integers(len(SINGLE_COLOUR_TEMPLATES)))].format(c=colour)


def _category_id(shape: str) -> int:
    return SHAPES.index(shape) + 1


def _annotation_json(obj: SyntheticObject, image_id: int, segmentation_format: str) -> dict[str, Any]:
    if segmentation_format == "polygon":
        form = "polygon"
    else:
        form = MIXED_FORMAT_CYCLE[(obj.ann_id - 1) % len(MIXED_FORMAT_CYCLE)]
    if form == "polygon":
        segmentation: Any = [list(obj.polygon)]
    elif form == "compressed_rle":
        segmentation = encode_rle(obj.mask)
    else:
        segmentation = encode_uncompressed_rle(obj.mask)
    rows, cols = np.nonzero(obj.mask)
    x_min, y_min = int(cols.min()), int(rows.min())
    bbox = [float(x_min), float(y_min), float(cols.max() - x_min + 1), float(rows.max() - y_min + 1)]
    return {
        "id": obj.ann_id,
        "image_id": image_id,
        "category_id": _category_id(obj.shape),
        "segmentation": segmentation,
        "area": int(obj.mask.sum()),
        "bbox": bbox,
        "iscrowd": 0,
    }


def _ref_json(ref: SyntheticRef, item: SyntheticImage, file_name: str) -> dict[str, Any]:
    shape_by_ann_id = {obj.ann_id: obj.shape for obj in item.objects}
    no_target = len(ref.ann_ids) == 0
    return {
        "ref_id": ref.ref_id,
        "image_id": item.image_id,
        "ann_id": [NO_TARGET_ANN_ID] if no_target else list(ref.ann_ids),
        "category_id": (
            [NO_TARGET_ANN_ID] if no_target else sorted(_category_id(shape_by_ann_id[a]) for a in ref.ann_ids)
        ),
        "split": item.split,
        "file_name": file_name,
        "sent_ids": [ref.sent_id],
        "sentences": [
            {"tokens": ref.sentence.split(), "raw": ref.sentence, "sent": ref.sentence, "sent_id": ref.sent_id}
        ],
        "no_target": no_target,
    }


def _spec_as_json(spec: SyntheticSpec) -> dict[str, Any]:
    """The spec as it reads back from JSON (tuples become lists)."""
    return json.loads(json.dumps(asdict(spec)))


def _write_jpeg(path: Path, image: np.ndarray) -> None:
    """Write an RGB uint8 ``(H, W, 3)`` image as JPEG."""
    encoded, data = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not encoded:
        raise OSError(f"could not encode JPEG image {path}")
    write_bytes_atomic(path, data.tobytes())


def _write_json(path: Path, payload: Any) -> None:
    """Compact JSON, written atomically (a reader never sees half a file)."""
    write_text_atomic(path, json.dumps(payload))
