"""gRefCOCO (GRES) metrics for generalized referring-expression segmentation.

Each expression has a ground-truth mask (empty for a *no-target* expression),
a decision (``rejected=True`` when the model answered ``[REJ]``, else ``[SEG]``)
and a predicted mask, which exists even when rejected.

Variant ``"gres"`` (benchmark definition, the default):

* Effective prediction: an empty mask if rejected, else the predicted mask.
  Intersection ``I`` and union ``U`` are taken between it and the ground truth.
* Per-expression IoU: no-target -> 1.0 if rejected else 0.0; target -> ``I / U``
  (a wrongly rejected target therefore scores 0).
* gIoU = mean per-expression IoU over all expressions.
* cIoU = sum(I) / sum(U) over all expressions (a rejected no-target adds
  nothing, an accepted no-target adds its predicted area to ``U``).
* N-acc = TP / (TP + FN) over no-target expressions (TP = rejected).
* T-acc = TN / (TN + FP) over target expressions (TN = not rejected).
* Pr@t = share of target expressions whose per-expression IoU >= t.
* gIoU, cIoU and counts are also broken down by expression kind
  ("single", "multi", "no-target"), as given by the caller.

Variant ``"gsva"`` (the original authors' code) differs only for a wrongly
rejected target: its ``I`` and ``U`` (hence its IoU and its cIoU contribution)
come from the predicted mask, ignoring the rejection.

A metric whose denominator is 0 is reported as ``None``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

VARIANTS = ("gres", "gsva")
PRECISION_THRESHOLDS = (0.7, 0.8, 0.9)
EXPRESSION_KINDS = ("single", "multi", "no-target")

_COLUMN_NAMES = {
    "giou": "gIoU",
    "ciou": "cIoU",
    "n_acc": "N-acc",
    "t_acc": "T-acc",
    **{f"pr@{t}": f"Pr@{t}" for t in PRECISION_THRESHOLDS},
}

Metrics = dict[str, float | int | None]


@dataclass(frozen=True)
class ExpressionScore:
    """One scored expression: everything needed to recompute any metric offline (JSON-serialisable via dataclasses.asdict)."""

    kind: str  # one of EXPRESSION_KINDS
    rejected: bool
    intersection: int  # of the effective prediction (benchmark definition)
    union: int
    pred_area: int  # area of the predicted mask (ignores the rejection)
    gt_area: int
    mask_intersection: int  # predicted mask vs gt, ignoring the rejection (for the gsva variant)
    mask_union: int

    @property
    def is_target(self) -> bool:
        return self.kind != "no-target"


def _check_kind(kind: str) -> None:
    if kind not in EXPRESSION_KINDS:
        raise ValueError(f"unknown expression kind {kind!r}; expected one of {EXPRESSION_KINDS}")


def _check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"unknown metric variant {variant!r}; expected one of {VARIANTS}")


def _as_bool_mask(mask: Any) -> np.ndarray:
    """Convert a numpy array or torch tensor to a bool array (nonzero = foreground)."""
    if hasattr(mask, "cpu"):
        mask = mask.cpu()
    return np.asarray(mask).astype(bool, copy=False)


def score_expression(pred_mask: Any, gt_mask: Any, rejected: bool, kind: str) -> ExpressionScore:
    """Score one expression from its masks and its ``[REJ]`` decision."""
    pred = _as_bool_mask(pred_mask)
    gt = _as_bool_mask(gt_mask)
    if pred.shape != gt.shape:
        raise ValueError(f"predicted mask shape {pred.shape} differs from ground-truth mask shape {gt.shape}")
    _check_kind(kind)
    gt_area = int(np.count_nonzero(gt))
    if (kind == "no-target") != (gt_area == 0):
        raise ValueError(
            f"expression kind {kind!r} is inconsistent with a ground-truth mask of area {gt_area}: "
            "kind must be 'no-target' exactly when the ground-truth mask is empty"
        )
    pred_area = int(np.count_nonzero(pred))
    mask_intersection = int(np.count_nonzero(pred & gt))
    mask_union = int(np.count_nonzero(pred | gt))
    rejected = bool(rejected)
    return ExpressionScore(
        kind=kind,
        rejected=rejected,
        intersection=0 if rejected else mask_intersection,
        union=gt_area if rejected else mask_union,
        pred_area=pred_area,
        gt_area=gt_area,
        mask_intersection=mask_intersection,
        mask_union=mask_union,
    )


def _effective_counts(score: ExpressionScore, variant: str) -> tuple[int, int]:
    """(I, U) that the expression contributes under ``variant``."""
    if variant == "gsva" and score.is_target and score.rejected:
        return score.mask_intersection, score.mask_union
    return score.intersection, score.union


def expression_iou(score: ExpressionScore, variant: str = "gres") -> float:
    """Per-expression IoU under ``variant`` (no-target: 1.0 if rejected else 0.0)."""
    _check_variant(variant)
    if not score.is_target:
        return 1.0 if score.rejected else 0.0
    intersection, union = _effective_counts(score, variant)
    return intersection / union


def _ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator else None


def _giou_ciou(scores: Sequence[ExpressionScore], variant: str) -> tuple[float | None, float | None]:
    counts = [_effective_counts(s, variant) for s in scores]
    giou = _ratio(sum(expression_iou(s, variant) for s in scores), len(scores))
    ciou = _ratio(sum(i for i, _ in counts), sum(u for _, u in counts))
    return giou, ciou


class GresAccumulator:
    """reset / process / evaluate, in the style of detectron2 evaluators."""

    def __init__(self, variant: str = "gres") -> None:
        _check_variant(variant)
        self.variant = variant
        self._scores: list[ExpressionScore] = []

    def reset(self) -> None:
        self._scores = []

    def process(self, score: ExpressionScore) -> None:
        _check_kind(score.kind)
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
            "n_acc": _ratio(sum(s.rejected for s in no_targets), len(no_targets)),
            "t_acc": _ratio(sum(not s.rejected for s in targets), len(targets)),
        }
        for t in PRECISION_THRESHOLDS:
            metrics[f"pr@{t}"] = _ratio(sum(iou >= t for iou in target_ious), len(targets))
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


def _format_value(value: float | int | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return f"{100.0 * value:.2f}"


def format_metrics_table(
    rows: dict[str, dict],
    columns: Sequence[str] = ("giou", "ciou", "n_acc", "t_acc", "pr@0.7", "pr@0.8", "pr@0.9"),
) -> str:
    """Fixed-width text table: one row per label, metric values as percentages (counts as integers, None as "-")."""
    header = [""] + [_COLUMN_NAMES.get(c, c) for c in columns]
    body = [[label] + [_format_value(metrics.get(c)) for c in columns] for label, metrics in rows.items()]
    widths = [max(len(line[j]) for line in [header, *body]) for j in range(len(header))]

    def render(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = (cell.rjust(width) for cell, width in zip(cells[1:], widths[1:]))
        return "  ".join([first, *rest]).rstrip()

    return "\n".join(render(line) for line in [header, *body])
