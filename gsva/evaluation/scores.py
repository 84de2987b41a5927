"""One scored answer slot: the counts every benchmark's metrics are computed from.

Each expression has a ground-truth mask (empty for a *no-target* expression), a decision
(``rejected=True`` when the model answered ``[REJ]``, else ``[SEG]``) and a predicted mask, which
exists even when rejected.

* Effective prediction: an empty mask if rejected, else the predicted mask. ``intersection`` and
  ``union`` are taken between it and the ground truth (the benchmarks' definition, variant
  ``"gres"``).
* The ``mask_*`` counts ignore the rejection: the original authors' code scores a wrongly rejected
  target with them (variant ``"gsva"``, see ``gsva.evaluation.families.gres``).

A metric whose denominator is 0 is reported as ``None``.
"""

from __future__ import annotations

import typing
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from gsva.config import MetricVariant

VARIANTS: tuple[str, ...] = typing.get_args(MetricVariant)
EXPRESSION_KINDS = ("single", "multi", "no-target")

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


def check_kind(kind: str) -> None:
    if kind not in EXPRESSION_KINDS:
        raise ValueError(f"unknown expression kind {kind!r}; expected one of {EXPRESSION_KINDS}")


def check_variant(variant: str) -> None:
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
    check_kind(kind)
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


def effective_counts(score: ExpressionScore, variant: str) -> tuple[int, int]:
    """(I, U) that the expression contributes under ``variant``."""
    if variant == "gsva" and score.is_target and score.rejected:
        return score.mask_intersection, score.mask_union
    return score.intersection, score.union


def expression_iou(score: ExpressionScore, variant: str = "gres") -> float:
    """Per-expression IoU under ``variant`` (no-target: 1.0 if rejected else 0.0)."""
    check_variant(variant)
    if not score.is_target:
        return 1.0 if score.rejected else 0.0
    intersection, union = effective_counts(score, variant)
    return intersection / union


def ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator else None


def check_kinds(scores: Sequence[ExpressionScore], where: str) -> None:
    """ValueError naming ``where`` and the score when a score has an unknown expression kind."""
    for index, score in enumerate(scores):
        if score.kind not in EXPRESSION_KINDS:
            raise ValueError(
                f"{where}: score {index} has unknown expression kind {score.kind!r}; expected one of {EXPRESSION_KINDS}"
            )


def require_targets(scores: Sequence[ExpressionScore], where: str, why: str) -> None:
    """ValueError naming ``where``, the score and ``why`` when a score is a no-target expression."""
    check_kinds(scores, where)
    for index, score in enumerate(scores):
        if not score.is_target:
            raise ValueError(f"{where}: score {index} is a no-target expression (empty ground truth); {why}")
