"""Ref-ZOM: referring expressions with one, several or no target.

oIoU = sum I / sum U and mIoU = mean IoU over target samples only; Acc over no-target samples,
correct when the effective predicted mask is entirely zero (rejected, or accepted with an empty
predicted mask).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gsva.evaluation.evaluator import BenchmarkEvaluator, scores_of
from gsva.evaluation.scores import ExpressionScore, Metrics, check_kinds, expression_iou, ratio


def refzom_metrics(scores: Sequence[ExpressionScore]) -> Metrics:
    """Keys: ``oiou`` (sum I / sum U, targets), ``miou`` (mean IoU, targets; a rejected target
    scores 0), ``acc`` (no-target samples whose effective prediction is empty: rejected, or
    accepted with ``pred_area == 0``), ``num_expressions``, ``num_target``, ``num_no_target``."""
    check_kinds(scores, "refzom_metrics")
    targets = [s for s in scores if s.is_target]
    no_targets = [s for s in scores if not s.is_target]
    correct_empty = sum(s.rejected or s.pred_area == 0 for s in no_targets)
    return {
        "oiou": ratio(sum(s.intersection for s in targets), sum(s.union for s in targets)),
        "miou": ratio(sum(expression_iou(s, "gres") for s in targets), len(targets)),
        "acc": ratio(correct_empty, len(no_targets)),
        "num_expressions": len(scores),
        "num_target": len(targets),
        "num_no_target": len(no_targets),
    }


class RefZomEvaluator(BenchmarkEvaluator):
    family = "refzom"
    columns = ("oiou", "miou", "acc")

    @classmethod
    def summarize(cls, records: list[dict[str, Any]]) -> dict[str, Any]:
        return {"metrics": refzom_metrics(scores_of(records))}
