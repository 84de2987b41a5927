"""ReasonSeg: one free-text query per image, answered with one mask.

gIoU = mean per-query IoU, cIoU = sum I / sum U over all queries. As in LISA's evaluation code, a
query whose union is empty (empty ground truth AND empty effective prediction) scores IoU 1.0 and
adds 0/0 to cIoU; an empty-ground-truth query with a non-empty effective prediction scores 0 and
adds its predicted area to the cIoU union. (LISA divides by ``union + 1e-5``; we divide exactly.)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gsva.evaluation.evaluator import BenchmarkEvaluator, scores_of
from gsva.evaluation.scores import ExpressionScore, Metrics, check_kinds, ratio


def reason_seg_iou(score: ExpressionScore) -> float:
    """Per-query IoU of the effective prediction; 1.0 when the union is empty (LISA's convention)."""
    return score.intersection / score.union if score.union else 1.0


def reason_seg_metrics(scores: Sequence[ExpressionScore]) -> Metrics:
    """Keys: ``giou``, ``ciou``, ``num_expressions``, ``num_no_target``."""
    check_kinds(scores, "reason_seg_metrics")
    return {
        "giou": ratio(sum(reason_seg_iou(s) for s in scores), len(scores)),
        "ciou": ratio(sum(s.intersection for s in scores), sum(s.union for s in scores)),
        "num_expressions": len(scores),
        "num_no_target": sum(not s.is_target for s in scores),
    }


class ReasonSegEvaluator(BenchmarkEvaluator):
    family = "reason_seg"
    columns = ("giou", "ciou")

    @classmethod
    def summarize(cls, records: list[dict[str, Any]]) -> dict[str, Any]:
        return {"metrics": reason_seg_metrics(scores_of(records))}
