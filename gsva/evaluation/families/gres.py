"""gRefCOCO (GRES): generalized referring expressions, some with several targets, some with none.

Variant ``"gres"`` (benchmark definition, the default), on the effective prediction (an empty mask
if rejected, else the predicted mask; see ``gsva.evaluation.scores``):

* Per-expression IoU: no-target -> 1.0 if rejected else 0.0; target -> ``I / U`` (a wrongly
  rejected target therefore scores 0).
* gIoU = mean per-expression IoU over all expressions.
* cIoU = sum(I) / sum(U) over all expressions (a rejected no-target adds nothing, an accepted
  no-target adds its predicted area to ``U``).
* N-acc = TP / (TP + FN) over no-target expressions (TP = rejected).
* T-acc = TN / (TN + FP) over target expressions (TN = not rejected).
* Pr@t = share of target expressions whose per-expression IoU >= t.
* gIoU, cIoU and counts are also broken down by expression kind ("single", "multi", "no-target").

Variant ``"gsva"`` (the original authors' code) differs only for a wrongly rejected target: its
``I`` and ``U`` (hence its IoU and its cIoU contribution) come from the predicted mask, ignoring the
rejection. Both variants are in every summary.

Each record also scores the two trivial baselines on the same slot: always ``[REJ]``, and always
``[SEG]`` with the union of every object of the image as the mask.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from gsva.batch import GsvaBatch
from gsva.evaluation.evaluator import BenchmarkEvaluator, scores_of
from gsva.evaluation.scores import (
    EXPRESSION_KINDS,
    VARIANTS,
    ExpressionScore,
    Metrics,
    check_kind,
    check_variant,
    effective_counts,
    expression_iou,
    ratio,
    score_expression,
)

PRECISION_THRESHOLDS = (0.7, 0.8, 0.9)
BASELINES = {"always_rej": "baseline: always [REJ]", "always_seg_union": "baseline: always [SEG], union of all objects"}


def _giou_ciou(scores: Sequence[ExpressionScore], variant: str) -> tuple[float | None, float | None]:
    counts = [effective_counts(s, variant) for s in scores]
    giou = ratio(sum(expression_iou(s, variant) for s in scores), len(scores))
    ciou = ratio(sum(i for i, _ in counts), sum(u for _, u in counts))
    return giou, ciou


class GresAccumulator:
    """reset / process / evaluate over expression scores."""

    def __init__(self, variant: str = "gres") -> None:
        check_variant(variant)
        self.variant = variant
        self._scores: list[ExpressionScore] = []

    def reset(self) -> None:
        self._scores = []

    def process(self, score: ExpressionScore) -> None:
        check_kind(score.kind)
        self._scores.append(score)

    def extend(self, scores: Iterable[ExpressionScore]) -> None:
        for score in scores:
            self.process(score)

    def evaluate(self) -> Metrics:
        scores = self._scores
        targets = [s for s in scores if s.is_target]
        no_targets = [s for s in scores if not s.is_target]
        target_ious = [expression_iou(s, self.variant) for s in targets]
        giou, ciou = _giou_ciou(scores, self.variant)
        metrics: Metrics = {
            "giou": giou,
            "ciou": ciou,
            "n_acc": ratio(sum(s.rejected for s in no_targets), len(no_targets)),
            "t_acc": ratio(sum(not s.rejected for s in targets), len(targets)),
        }
        for t in PRECISION_THRESHOLDS:
            metrics[f"pr@{t}"] = ratio(sum(iou >= t for iou in target_ious), len(targets))
        metrics.update(num_expressions=len(scores), num_no_target=len(no_targets), num_target=len(targets))
        for kind in EXPRESSION_KINDS:
            subset = [s for s in scores if s.kind == kind]
            metrics[f"{kind}/giou"], metrics[f"{kind}/ciou"] = _giou_ciou(subset, self.variant)
            metrics[f"{kind}/count"] = len(subset)
        return metrics


def gres_metrics(scores: Sequence[ExpressionScore], variant: str = "gres") -> Metrics:
    """Accumulate ``scores`` and evaluate them in one call."""
    accumulator = GresAccumulator(variant)
    accumulator.extend(scores)
    return accumulator.evaluate()


class GresEvaluator(BenchmarkEvaluator):
    family = "gres"
    columns = ("giou", "ciou", "n_acc", "t_acc", "pr@0.7", "pr@0.8", "pr@0.9")
    has_variants = True

    def begin_batch(self, batch: GsvaBatch) -> None:
        """The union of all objects of each image of the batch, decoded once (the always-[SEG]
        baseline's mask)."""
        self._objects = {image_id: self.dataset.objects_mask(image_id) for image_id in {meta["image_id"] for meta in batch.metadata}}

    def slot_fields(self, batch: GsvaBatch, conv: int, slot: int, gt: np.ndarray) -> dict[str, Any]:
        kind = batch.metadata[conv]["kinds"][slot]
        objects = self._objects[batch.metadata[conv]["image_id"]]
        return {
            "always_rej": dataclasses.asdict(score_expression(np.zeros_like(gt), gt, True, kind)),
            "always_seg_union": dataclasses.asdict(score_expression(objects, gt, False, kind)),
        }

    @classmethod
    def summarize(cls, records: list[dict[str, Any]]) -> dict[str, Any]:
        scores = scores_of(records)
        return {
            "metrics": {variant: gres_metrics(scores, variant) for variant in VARIANTS},
            "baselines": {name: gres_metrics(scores_of(records, name)) for name in BASELINES if records and name in records[0]},
        }

    @classmethod
    def headline(cls, summary: dict[str, Any], variant: str = "gres") -> Metrics:
        check_variant(variant)
        return summary["metrics"][variant]

    @classmethod
    def table_rows(cls, summary: dict[str, Any], protocol: str, variant: str = "gres") -> dict[str, Metrics]:
        rows = super().table_rows(summary, protocol, variant)
        rows.update({BASELINES[name]: metrics for name, metrics in summary.get("baselines", {}).items()})
        return rows

    @classmethod
    def notes(cls, summary: dict[str, Any], variant: str = "gres") -> list[str]:
        metrics = cls.headline(summary, variant)
        return ["by kind: " + ", ".join(
            f"{kind} gIoU {100 * (metrics[f'{kind}/giou'] or 0):.2f} ({metrics[f'{kind}/count']})" for kind in EXPRESSION_KINDS
        )]
