"""Boxes from masks (REC scored from segmentation): every record carries the box IoU of its
effective prediction, and the classic RES family reports REC Acc@0.5 from it."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

Box = tuple[int, int, int, int]


def mask_box(mask: np.ndarray) -> Box | None:
    """Tight box ``(x0, y0, x1, y1)`` of a (H, W) mask (nonzero = foreground), ``None`` if empty.

    ``x0``/``y0`` are the first foreground column/row, ``x1``/``y1`` one past the last (exclusive),
    so the box area is ``(x1 - x0) * (y1 - y0)`` pixels.
    """
    m = np.asarray(mask).astype(bool, copy=False)
    if m.ndim != 2:
        raise ValueError(f"mask_box expects a (H, W) mask, got shape {m.shape}")
    cols = np.flatnonzero(m.any(axis=0))
    if cols.size == 0:
        return None
    rows = np.flatnonzero(m.any(axis=1))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def _box_area(box: Sequence[float], name: str) -> float:
    x0, y0, x1, y1 = box
    if not (x1 > x0 and y1 > y0):
        raise ValueError(f"box_iou: box {name} = {tuple(box)} is degenerate; expected x1 > x0 and y1 > y0")
    return (x1 - x0) * (y1 - y0)


def box_iou(a: Sequence[float] | None, b: Sequence[float] | None) -> float:
    """IoU of two ``(x0, y0, x1, y1)`` boxes (exclusive ends, as from :func:`mask_box`); 0.0 if either is None."""
    if a is None or b is None:
        return 0.0
    area_a, area_b = _box_area(a, "a"), _box_area(b, "b")
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    inter = width * height if width > 0 and height > 0 else 0
    return float(inter / (area_a + area_b - inter))


def mask_box_iou(pred_mask: np.ndarray, gt_mask: np.ndarray, rejected: bool = False) -> float:
    """Box IoU between the effective prediction (empty if ``rejected``) and the ground truth, both (H, W)."""
    pred = np.asarray(pred_mask)
    gt = np.asarray(gt_mask)
    if pred.shape != gt.shape:
        raise ValueError(f"mask_box_iou: predicted mask shape {pred.shape} differs from ground-truth shape {gt.shape}")
    return 0.0 if rejected else box_iou(mask_box(pred), mask_box(gt))
