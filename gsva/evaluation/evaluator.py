"""The evaluator of one benchmark: ``reset`` / ``process`` / ``evaluate``, in the style of
detectron2's ``DatasetEvaluator``. The loop (``gsva.evaluation.loop``) knows no benchmark: it
hands every batch and its predictions to ``process`` and calls ``evaluate`` once at the end.

``process`` turns each answer slot into a record that carries everything any metric needs (the
score counts of ``gsva.evaluation.scores``, the box IoU of the effective prediction, the
protocol's outputs) plus the family's own fields (``slot_fields``). Records are returned as well
as kept, so that a resumable evaluation can store them batch by batch. ``evaluate`` gathers the
records of every rank in dataset order and, on rank 0, summarises them (``summarize``).

A benchmark family (``gsva.evaluation.families``) subclasses ``BenchmarkEvaluator`` and decides its
metrics, headline columns and printout.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from gsva.batch import GsvaBatch
from gsva.distributed import gather_objects, is_main
from gsva.evaluation.boxes import mask_box_iou
from gsva.evaluation.scores import ExpressionScore, Metrics, score_expression
from gsva.evaluation.table import format_metrics_table
from gsva.model.gsva import SlotPredictions


class BenchmarkEvaluator:
    family: str = ""
    """The family name the dataset catalog gives the benchmark's datasets."""
    columns: tuple[str, ...] = ()
    """Metric keys of the headline table."""
    has_variants: bool = False
    """Whether the summary holds one metrics table per metric variant (``scores.VARIANTS``)."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset
        self.records: list[dict[str, Any]] = []
        """This rank's records; after ``evaluate``, every rank's records in dataset order."""

    # ----------------------------------------------------------------- the evaluator protocol
    def reset(self) -> None:
        self.records = []

    def add(self, records: list[dict[str, Any]]) -> None:
        """Records scored before (a resumed evaluation)."""
        self.records.extend(records)

    def process(self, batch: GsvaBatch, predictions: list[SlotPredictions]) -> list[dict[str, Any]]:
        """The records of one batch (one per answer slot, in conversation then slot order)."""
        self.begin_batch(batch)
        records = [
            record for conv, prediction in enumerate(predictions) for record in self._conversation_records(batch, conv, prediction)
        ]
        self.records.extend(records)
        return records

    def evaluate(self) -> dict[str, Any]:
        """Gather every rank's records into ``records`` (dataset order, on every rank); return
        their summary on rank 0, an empty dict on the others."""
        records = sorted(self.records, key=lambda record: record["item"])  # stable: slot order kept
        for position, record in enumerate(records):
            record["order"] = position  # dataset order within this rank; items are whole on one rank
        records = gather_objects(records)
        records.sort(key=lambda record: (record["item"], record["order"]))
        for record in records:
            del record["order"]
        self.records = records
        return self.summary(records) if is_main() else {}

    # ----------------------------------------------------------------- what a family decides
    def begin_batch(self, batch: GsvaBatch) -> None:
        """Per-batch preparation of ``slot_fields`` (e.g. masks decoded once per image)."""

    def slot_fields(self, batch: GsvaBatch, conv: int, slot: int, gt: np.ndarray) -> dict[str, Any]:
        """The family's own fields of one record; ``gt`` is the slot's (H, W) bool ground truth."""
        return {}

    @classmethod
    def summary(cls, records: list[dict[str, Any]]) -> dict[str, Any]:
        """The family's metrics and counts of ``records`` (what ``scripts/score.py`` recomputes
        from ``records.jsonl``)."""
        return {
            "family": cls.family,
            "num_records": len(records),
            "parse_failures": int(sum(record.get("parse_failures", 0) for record in records)),
            **cls.summarize(records),
        }

    @classmethod
    def summarize(cls, records: list[dict[str, Any]]) -> dict[str, Any]:
        """``{"metrics": ...}`` and any other summary the family reports."""
        raise NotImplementedError

    @classmethod
    def headline(cls, summary: dict[str, Any], variant: str = "gres") -> Metrics:
        """The metrics row of ``summary`` shown first (and logged to TensorBoard); ``variant``
        picks among the metric variants of a family that has several (GRES)."""
        return summary["metrics"]

    @classmethod
    def table_rows(cls, summary: dict[str, Any], protocol: str, variant: str = "gres") -> dict[str, Metrics]:
        """The printed table's rows: the model's headline, and any baselines the family scores."""
        return {f"GSVA ({protocol})": cls.headline(summary, variant)}

    @classmethod
    def notes(cls, summary: dict[str, Any], variant: str = "gres") -> list[str]:
        """Lines printed under the table."""
        return []

    # ----------------------------------------------------------------- records
    def _conversation_records(self, batch: GsvaBatch, conv: int, prediction: SlotPredictions) -> list[dict[str, Any]]:
        """One record per answer slot. The generated text is on every slot, the conversation's
        parse failures on its first slot only."""
        meta = batch.metadata[conv]
        targets = batch.target_masks[conv].cpu().numpy() > 0
        records = []
        for slot, kind in enumerate(meta["kinds"]):
            gt, predicted, rejected = targets[slot], prediction.masks[slot].cpu().numpy(), prediction.rejected[slot]
            score = score_expression(predicted, gt, rejected, kind)
            records.append({
                "item": meta["item"],
                "image_id": meta["image_id"],
                "key": meta["keys"][slot],
                "expression": meta["expressions"][slot],
                **dataclasses.asdict(score),
                "box_iou": mask_box_iou(predicted, gt, rejected),
                "generated_text": prediction.text,
                "parse_failures": prediction.parse_failures if slot == 0 else 0,
                **self.slot_fields(batch, conv, slot, gt),
            })
        return records


def scores_of(records: list[dict[str, Any]], key: str | None = None) -> list[ExpressionScore]:
    """The ``ExpressionScore`` of each record (or of its field ``key``, a baseline's score)."""
    names = [field.name for field in dataclasses.fields(ExpressionScore)]
    return [ExpressionScore(**{name: (record[key] if key else record)[name] for name in names}) for record in records]



def headline_metrics(family: type[BenchmarkEvaluator], summary: dict[str, Any], variant: str) -> Metrics:
    """The headline columns of ``summary`` that have a value (what training logs)."""
    return {key: value for key, value in family.headline(summary, variant).items() if key in family.columns and value is not None}


def format_report(family: type[BenchmarkEvaluator], summary: dict[str, Any], protocol: str, title: str, variant: str) -> str:
    """The printout of a summary: title, table, the family's notes and, for generation, the
    answers' parse failures. ``variant`` is named in the title when the family has variants."""
    variant_note = f", metric variant {variant!r}" if family.has_variants else ""
    lines = [f"\n{title}: {summary['num_records']} expressions{variant_note}"]
    lines.append(format_metrics_table(family.table_rows(summary, protocol, variant), family.columns))
    lines += family.notes(summary, variant)
    if protocol == "generate":
        lines.append(f"answers whose slots did not line up with the expressions: {summary['parse_failures']} slot(s)")
    return "\n".join(lines)
