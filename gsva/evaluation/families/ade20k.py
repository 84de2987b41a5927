"""ADE20K val semantic segmentation (paper Table A5): one prompt per class present in an image.

Per class IoU_c = sum I / sum U over that class's prompts (all images), mIoU = mean of IoU_c over
the classes seen. Classes absent from every image are not evaluated, hence "recall-like".
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from gsva.batch import GsvaBatch
from gsva.evaluation.evaluator import BenchmarkEvaluator, scores_of
from gsva.evaluation.scores import ExpressionScore, ratio, require_targets


def class_miou(class_ids: Sequence[int], scores: Sequence[ExpressionScore]) -> dict[str, Any]:
    """``scores[i]`` is the prompt "What is {class_ids[i]} in this image?" for an image that contains
    that class (a target expression; a no-target score raises). Keys: ``miou`` (mean IoU_c over the
    classes seen, None if none), ``num_classes``, ``num_prompts``, ``per_class`` ({class_id: IoU_c},
    sorted by id)."""
    where = "class_miou"
    if len(class_ids) != len(scores):
        raise ValueError(f"{where}: got {len(class_ids)} class ids but {len(scores)} scores; they must pair up")
    require_targets(scores, where, "only classes present in an image are prompted")
    sums: dict[int, list[int]] = {}
    for class_id, score in zip(class_ids, scores):
        totals = sums.setdefault(int(class_id), [0, 0])
        totals[0] += score.intersection
        totals[1] += score.union
    per_class = {c: sums[c][0] / sums[c][1] for c in sorted(sums)}
    return {
        "miou": ratio(sum(per_class.values()), len(per_class)),
        "num_classes": len(per_class),
        "num_prompts": len(scores),
        "per_class": per_class,
    }


class Ade20kEvaluator(BenchmarkEvaluator):
    family = "ade20k"
    columns = ("miou", "num_classes")

    def slot_fields(self, batch: GsvaBatch, conv: int, slot: int, gt: np.ndarray) -> dict[str, Any]:
        return {"class_id": batch.metadata[conv]["class_ids"][slot]}

    @classmethod
    def summarize(cls, records: list[dict[str, Any]]) -> dict[str, Any]:
        return {"metrics": class_miou([record["class_id"] for record in records], scores_of(records))}
