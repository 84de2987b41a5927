"""Metrics for the benchmarks of the GSVA paper other than gRefCOCO (see gsva/metrics.py for GRES).

All functions are pure (numpy only) and work on :class:`gsva.metrics.ExpressionScore` records,
plus a few per-expression extras (box IoUs for REC, class ids for semantic segmentation).

Common conventions:

* Effective prediction: an empty mask if the model rejected the expression (``[REJ]``), else the
  predicted mask. ``ExpressionScore.intersection`` / ``.union`` already hold its counts against the
  ground truth; every metric here uses them (the GRES ``"gres"`` variant), never the
  rejection-ignoring ``mask_*`` counts.
* A metric whose denominator is 0 is reported as ``None`` (as in gsva/metrics.py).
* Inconsistent inputs (sequences of different lengths, an expression kind that the protocol
  cannot have) raise ``ValueError``.

Benchmarks:

* REC (boxes from masks): a mask's box is its tight pixel box; Acc@t = share of expressions whose
  predicted box has IoU >= t with the ground-truth box (a rejected or empty prediction has no box
  and scores 0).
* Classic RES (RefCOCO/+/g): only target expressions; cIoU = sum I / sum U, gIoU = mean IoU
  (a rejected target scores 0), Pr@t for t in 0.5..0.9, REC Acc@0.5.
* Ref-ZOM: oIoU = sum I / sum U and mIoU = mean IoU over target samples only; Acc over no-target
  samples, correct when the effective predicted mask is entirely zero (rejected, or accepted with
  an empty predicted mask).
* ReasonSeg: gIoU = mean per-query IoU, cIoU = sum I / sum U over all queries. As in LISA's
  evaluation code, a query whose union is empty (empty ground truth AND empty effective
  prediction) scores IoU 1.0 and adds 0/0 to cIoU; an empty-ground-truth query with a non-empty
  effective prediction scores 0 and adds its predicted area to the cIoU union. (LISA divides by
  ``union + 1e-5``; we divide exactly.)
* ADE20K val semantic segmentation (paper Table A5): one prompt per class present in an image;
  per class IoU_c = sum I / sum U over that class's prompts (all images), mIoU = mean of IoU_c over
  the classes seen. Classes absent from every image are not evaluated, hence "recall-like".
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from gsva.metrics import EXPRESSION_KINDS, ExpressionScore, Metrics, expression_iou

Box = tuple[int, int, int, int]

RES_PRECISION_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)
REC_THRESHOLD = 0.5


def _ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator else None


def _check_kinds(scores: Sequence[ExpressionScore], where: str) -> None:
    for index, score in enumerate(scores):
        if score.kind not in EXPRESSION_KINDS:
            raise ValueError(
                f"{where}: score {index} has unknown expression kind {score.kind!r}; expected one of {EXPRESSION_KINDS}"
            )


def _check_same_length(where: str, first_name: str, first: Sequence, second_name: str, second: Sequence) -> None:
    if len(first) != len(second):
        raise ValueError(f"{where}: got {len(first)} {first_name} but {len(second)} {second_name}; they must pair up")


def _require_targets(scores: Sequence[ExpressionScore], where: str, why: str) -> None:
    for index, score in enumerate(scores):
        if not score.is_target:
            raise ValueError(f"{where}: score {index} is a no-target expression (empty ground truth); {why}")


# --- REC: boxes from masks ------------------------------------------------------------------------


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


def rec_accuracy(box_ious: Sequence[float], threshold: float = REC_THRESHOLD) -> float | None:
    """Acc@threshold: share of expressions whose box IoU is >= ``threshold`` (None for no expressions)."""
    return _ratio(sum(iou >= threshold for iou in box_ious), len(box_ious))


# --- classic RES (RefCOCO / RefCOCO+ / RefCOCOg) --------------------------------------------------


def res_metrics(scores: Sequence[ExpressionScore], box_ious: Sequence[float]) -> Metrics:
    """cIoU, gIoU, Pr@0.5..0.9 and REC Acc@0.5 over target-only expressions.

    ``box_ious[i]`` is the box IoU of expression ``i`` (e.g. from :func:`mask_box_iou`).
    Keys: ``ciou``, ``giou``, ``rec_acc@0.5``, ``pr@0.5`` .. ``pr@0.9``, ``num_expressions``.
    """
    where = "res_metrics"
    _check_same_length(where, "scores", scores, "box IoUs", box_ious)
    _check_kinds(scores, where)
    _require_targets(scores, where, "classic RES has only target expressions (use gres_metrics for GRES)")
    ious = [expression_iou(s, "gres") for s in scores]
    metrics: Metrics = {
        "ciou": _ratio(sum(s.intersection for s in scores), sum(s.union for s in scores)),
        "giou": _ratio(sum(ious), len(scores)),
        f"rec_acc@{REC_THRESHOLD}": rec_accuracy(box_ious, REC_THRESHOLD),
    }
    for t in RES_PRECISION_THRESHOLDS:
        metrics[f"pr@{t}"] = _ratio(sum(iou >= t for iou in ious), len(scores))
    metrics["num_expressions"] = len(scores)
    return metrics


# --- Ref-ZOM --------------------------------------------------------------------------------------


def refzom_metrics(scores: Sequence[ExpressionScore]) -> Metrics:
    """Ref-ZOM oIoU / mIoU over target samples and Acc over no-target samples.

    Keys: ``oiou`` (sum I / sum U, targets), ``miou`` (mean IoU, targets; a rejected target scores 0),
    ``acc`` (no-target samples whose effective prediction is empty: rejected, or accepted with
    ``pred_area == 0``), ``num_expressions``, ``num_target``, ``num_no_target``.
    """
    _check_kinds(scores, "refzom_metrics")
    targets = [s for s in scores if s.is_target]
    no_targets = [s for s in scores if not s.is_target]
    correct_empty = sum(s.rejected or s.pred_area == 0 for s in no_targets)
    return {
        "oiou": _ratio(sum(s.intersection for s in targets), sum(s.union for s in targets)),
        "miou": _ratio(sum(expression_iou(s, "gres") for s in targets), len(targets)),
        "acc": _ratio(correct_empty, len(no_targets)),
        "num_expressions": len(scores),
        "num_target": len(targets),
        "num_no_target": len(no_targets),
    }


# --- ReasonSeg ------------------------------------------------------------------------------------


def reason_seg_iou(score: ExpressionScore) -> float:
    """Per-query IoU of the effective prediction; 1.0 when the union is empty (LISA's convention)."""
    return score.intersection / score.union if score.union else 1.0


def reason_seg_metrics(scores: Sequence[ExpressionScore]) -> Metrics:
    """ReasonSeg gIoU (mean of :func:`reason_seg_iou`) and cIoU (sum I / sum U) over all queries.

    Queries with an empty ground truth ('no-target' kind) are included: IoU 1.0 if the effective
    prediction is empty (rejected, or an empty predicted mask), else 0.0 with the predicted area
    added to the cIoU union. Keys: ``giou``, ``ciou``, ``num_expressions``, ``num_no_target``.
    """
    _check_kinds(scores, "reason_seg_metrics")
    return {
        "giou": _ratio(sum(reason_seg_iou(s) for s in scores), len(scores)),
        "ciou": _ratio(sum(s.intersection for s in scores), sum(s.union for s in scores)),
        "num_expressions": len(scores),
        "num_no_target": sum(not s.is_target for s in scores),
    }


# --- ADE20K semantic segmentation (recall-like class mIoU) ----------------------------------------


def class_miou(class_ids: Sequence[int], scores: Sequence[ExpressionScore]) -> dict[str, Any]:
    """Class mIoU over the classes present in the evaluated images (paper Table A5).

    ``scores[i]`` is the prompt "What is {class_ids[i]} in this image?" for an image that contains
    that class (a target expression; a no-target score raises). Per class c:
    IoU_c = sum of I / sum of U over all prompts of c. Keys: ``miou`` (mean IoU_c over the classes
    seen, None if none), ``num_classes``, ``num_prompts``, ``per_class`` ({class_id: IoU_c}, sorted by id).
    """
    where = "class_miou"
    _check_same_length(where, "class ids", class_ids, "scores", scores)
    _check_kinds(scores, where)
    _require_targets(scores, where, "only classes present in an image are prompted")
    sums: dict[int, list[int]] = {}
    for class_id, score in zip(class_ids, scores):
        totals = sums.setdefault(int(class_id), [0, 0])
        totals[0] += score.intersection
        totals[1] += score.union
    per_class = {c: sums[c][0] / sums[c][1] for c in sorted(sums)}
    return {
        "miou": _ratio(sum(per_class.values()), len(per_class)),
        "num_classes": len(per_class),
        "num_prompts": len(scores),
        "per_class": per_class,
    }
