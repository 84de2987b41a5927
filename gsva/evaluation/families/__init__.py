"""Benchmark families: each module owns one family's metrics, the fields it adds to every record,
its summary, its headline columns and its printout, as a ``BenchmarkEvaluator`` subclass.

| family | datasets | metrics |
|---|---|---|
| ``gres`` | grefcoco | gIoU, cIoU, N-acc, T-acc, Pr@0.7/0.8/0.9, per kind; trivial baselines |
| ``res`` | refcoco, refcoco+, refcocog, refclef | gIoU, cIoU, REC Acc@0.5 (box of the mask), Pr@0.5..0.9 |
| ``refzom`` | refzom | oIoU, mIoU (samples with targets), Acc (no-target samples, empty mask) |
| ``reason_seg`` | reason_seg | gIoU, cIoU |
| ``ade20k`` | ade20k | mIoU over the classes present (Table A5) |

Which datasets a family scores is said once, in the dataset catalog (``gsva.data.catalog``).
"""

from __future__ import annotations

from gsva.evaluation.evaluator import BenchmarkEvaluator
from gsva.evaluation.families.ade20k import Ade20kEvaluator
from gsva.evaluation.families.gres import GresEvaluator
from gsva.evaluation.families.reason_seg import ReasonSegEvaluator
from gsva.evaluation.families.refzom import RefZomEvaluator
from gsva.evaluation.families.res import ResEvaluator

FAMILIES: dict[str, type[BenchmarkEvaluator]] = {
    evaluator.family: evaluator
    for evaluator in (GresEvaluator, ResEvaluator, RefZomEvaluator, ReasonSegEvaluator, Ade20kEvaluator)
}
"""Family name (as the dataset catalog gives it) -> its evaluator."""
