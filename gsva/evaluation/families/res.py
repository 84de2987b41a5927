"""Classic RES (RefCOCO, RefCOCO+, RefCOCOg, RefCLEF): one target per expression.

Only target expressions; cIoU = sum I / sum U, gIoU = mean IoU (a rejected target scores 0),
Pr@t for t in 0.5..0.9, and REC Acc@0.5 from the boxes of the masks (a mask's box is its tight
pixel box; Acc@t = share of expressions whose predicted box has IoU >= t with the ground-truth box;
a rejected or empty prediction has no box and scores 0).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gsva.evaluation.evaluator import BenchmarkEvaluator, scores_of
from gsva.evaluation.scores import ExpressionScore, Metrics, expression_iou, ratio, require_targets

RES_PRECISION_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)
REC_THRESHOLD = 0.5


def rec_accuracy(box_ious: Sequence[float], threshold: float = REC_THRESHOLD) -> float | None:
    """Acc@threshold: share of expressions whose box IoU is >= ``threshold`` (None for no expressions)."""
    return ratio(sum(iou >= threshold for iou in box_ious), len(box_ious))


def res_metrics(scores: Sequence[ExpressionScore], box_ious: Sequence[float]) -> Metrics:
    """cIoU, gIoU, Pr@0.5..0.9 and REC Acc@0.5 over target-only expressions.

    ``box_ious[i]`` is the box IoU of expression ``i`` (``gsva.evaluation.boxes.mask_box_iou``).
    Keys: ``ciou``, ``giou``, ``rec_acc@0.5``, ``pr@0.5`` .. ``pr@0.9``, ``num_expressions``.
    """
    where = "res_metrics"
    if len(scores) != len(box_ious):
        raise ValueError(f"{where}: got {len(scores)} scores but {len(box_ious)} box IoUs; they must pair up")
    require_targets(scores, where, "classic RES has only target expressions (use gres_metrics for GRES)")
    ious = [expression_iou(s, "gres") for s in scores]
    metrics: Metrics = {
        "ciou": ratio(sum(s.intersection for s in scores), sum(s.union for s in scores)),
        "giou": ratio(sum(ious), len(scores)),
        f"rec_acc@{REC_THRESHOLD}": rec_accuracy(box_ious, REC_THRESHOLD),
    }
    for t in RES_PRECISION_THRESHOLDS:
        metrics[f"pr@{t}"] = ratio(sum(iou >= t for iou in ious), len(scores))
    metrics["num_expressions"] = len(scores)
    return metrics


class ResEvaluator(BenchmarkEvaluator):
    family = "res"
    columns = ("giou", "ciou", "rec_acc@0.5", "pr@0.5", "pr@0.7", "pr@0.9")

    @classmethod
    def summarize(cls, records: list[dict[str, Any]]) -> dict[str, Any]:
        return {"metrics": res_metrics(scores_of(records), [record["box_iou"] for record in records])}
