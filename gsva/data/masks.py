"""Conversions between COCO segmentation annotations and boolean masks.

COCO stores a segmentation in one of three forms:

* polygons: a list of parts, each a flat list ``[x1, y1, x2, y2, ...]`` of
  vertex coordinates in pixels; the object is the union of its parts;
* compressed RLE: ``{"size": [h, w], "counts": str | bytes}``;
* uncompressed RLE: ``{"size": [h, w], "counts": [int, ...]}``, run lengths in
  column-major order starting with a run of zeros.

An RLE's run lengths are checked before pycocotools decodes it (it trusts them: an empty or
short RLE gives a wrong mask without a word, a negative run can crash it): they must be
non-negative and sum to ``h * w``.

All masks in this module are ``bool`` arrays of shape ``(H, W)``.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pycocotools.mask as coco_mask

Segmentation = list[list[float]] | dict[str, Any]

# pycocotools' compiled decoder builds its output through an ``__array__`` that
# predates NumPy 2's ``copy`` keyword; NumPy warns on every call. The result is
# unaffected, so only that message is ignored.
_PYCOCOTOOLS_COPY_WARNING = r"__array__ implementation doesn't accept a copy keyword"


def decode_segmentation(segmentation: Segmentation, height: int, width: int) -> np.ndarray:
    """Decode a COCO segmentation of any form into a bool mask of shape ``(height, width)``."""
    if isinstance(segmentation, list):
        rle = _polygons_to_rle(segmentation, height, width)
    elif isinstance(segmentation, dict):
        rle = _rle_dict_to_compressed(segmentation, height, width)
    else:
        raise TypeError(
            "segmentation: expected a list of polygons or an RLE dict, "
            f"got {type(segmentation).__name__}"
        )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_PYCOCOTOOLS_COPY_WARNING, category=DeprecationWarning)
        decoded = coco_mask.decode(rle)
    return decoded.view(bool)  # pycocotools returns 0/1 uint8


def union_of_masks(masks: Sequence[np.ndarray], height: int, width: int) -> np.ndarray:
    """Pixel-wise union of bool masks, each of shape ``(height, width)``.

    Returns a bool ``(height, width)`` array, all ``False`` when ``masks`` is empty (the mask
    itself, as bool, when there is only one).
    """
    for index, mask in enumerate(masks):
        if mask.shape != (height, width):
            raise ValueError(
                f"masks[{index}]: expected shape {(height, width)}, got {mask.shape}"
            )
    if len(masks) == 1:
        return masks[0].astype(bool, copy=False)
    union = np.zeros((height, width), dtype=bool)
    for mask in masks:
        union |= mask.astype(bool, copy=False)
    return union


def encode_rle(mask: np.ndarray) -> dict[str, Any]:
    """Encode a bool ``(H, W)`` mask as compressed RLE with ``counts`` as a str (JSON friendly)."""
    _check_2d_mask(mask)
    rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}


def encode_uncompressed_rle(mask: np.ndarray) -> dict[str, Any]:
    """Encode a bool ``(H, W)`` mask as uncompressed RLE (``counts`` a list of run lengths).

    Runs are taken in column-major order and alternate zeros/ones, starting with
    a (possibly empty) run of zeros, as in COCO.
    """
    _check_2d_mask(mask)
    flat = mask.astype(bool).flatten(order="F")
    change_positions = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    boundaries = np.concatenate(([0], change_positions, [flat.size]))
    run_lengths = np.diff(boundaries).tolist()
    if flat.size > 0 and flat[0]:
        run_lengths = [0, *run_lengths]
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": [int(n) for n in run_lengths]}


def _check_2d_mask(mask: np.ndarray) -> None:
    if mask.ndim != 2:
        raise ValueError(f"mask: expected a 2-D (H, W) array, got shape {mask.shape}")


def _polygons_to_rle(polygons: list[list[float]], height: int, width: int) -> dict[str, Any]:
    if len(polygons) == 0:
        raise ValueError("segmentation: polygon list is empty, expected at least one part")
    for index, part in enumerate(polygons):
        if not isinstance(part, (list, tuple)):
            raise ValueError(
                f"segmentation[{index}]: expected a flat list of coordinates [x1, y1, ...], "
                f"got {type(part).__name__}"
            )
        if len(part) % 2 != 0:
            raise ValueError(
                f"segmentation[{index}]: expected an even number of coordinates, got {len(part)}"
            )
        if len(part) < 6:
            raise ValueError(
                f"segmentation[{index}]: a polygon needs at least 3 points, got {len(part) // 2}"
            )
    parts = [[float(value) for value in part] for part in polygons]
    return coco_mask.merge(coco_mask.frPyObjects(parts, height, width))


def _rle_dict_to_compressed(rle: dict[str, Any], height: int, width: int) -> dict[str, Any]:
    if "size" not in rle or "counts" not in rle:
        raise ValueError(
            f"segmentation: RLE dict needs keys 'size' and 'counts', got {sorted(rle)}"
        )
    size = [int(value) for value in rle["size"]]
    if size != [height, width]:
        raise ValueError(
            f"segmentation: RLE size {size} does not match the image size [{height}, {width}]"
        )
    counts = rle["counts"]
    if isinstance(counts, list):
        if not all(isinstance(run, int) and not isinstance(run, bool) for run in counts):
            raise ValueError("segmentation: uncompressed RLE 'counts' must be a list of ints")
        _check_run_lengths(counts, height, width, "uncompressed")
        return coco_mask.frPyObjects({"size": size, "counts": counts}, height, width)
    if isinstance(counts, str):
        counts = counts.encode("ascii")
    if isinstance(counts, bytes):
        _check_run_lengths(_compressed_run_lengths(counts), height, width, "compressed")
        return {"size": size, "counts": counts}
    raise ValueError(
        f"segmentation: RLE 'counts' must be a str, bytes or list of ints, got {type(counts).__name__}"
    )


def _check_run_lengths(runs: list[int], height: int, width: int, form: str) -> None:
    """``ValueError`` unless ``runs`` are non-negative and cover the ``height`` x ``width`` image."""
    expected = f"expected run lengths summing to height * width = {height * width}"
    total = sum(runs)
    if total == 0:
        raise ValueError(f"segmentation: the {form} RLE is empty (its 'counts' sum to 0); {expected}")
    if min(runs) < 0:
        raise ValueError(f"segmentation: the {form} RLE has a negative run length {min(runs)}; {expected}")
    if total != height * width:
        raise ValueError(f"segmentation: the {form} RLE 'counts' sum to {total}; {expected}")


def _compressed_run_lengths(counts: bytes) -> list[int]:
    """The run lengths that a compressed RLE string codes, decoded as pycocotools' ``rleFrString``
    does: each a run of 5-bit groups (character - 48, bit 0x20 = more to come, bit 0x10 of the
    last = negative), from the third on a difference to the run two before."""
    runs: list[int] = []
    position = 0
    while position < len(counts):
        value, shift, more = 0, 0, True
        while more:
            if position == len(counts):
                raise ValueError("segmentation: compressed RLE 'counts' end in the middle of a run length")
            code = counts[position] - 48
            if not 0 <= code < 64:
                raise ValueError(
                    f"segmentation: compressed RLE 'counts' hold {chr(counts[position])!r} at position {position}, "
                    "expected characters '0' to 'o'"
                )
            value |= (code & 0x1F) << shift
            more = bool(code & 0x20)
            position += 1
            shift += 5
            if not more and code & 0x10:
                value |= -1 << shift
        if len(runs) > 2:
            value += runs[-2]
        runs.append(value)
    return runs
