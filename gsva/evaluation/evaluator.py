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

    def __init__(self, dataset: Any, variant: str = "gres") -> None:
        self.dataset = dataset
        self.variant = variant
        self._records: list[dict[str, Any]] = []

    # ----------------------------------------------------------------- the evaluator protocol
    def reset(self) -> None:
        self._records = []

    def add(self, records: list[dict[str, Any]]) -> None:
        """Records scored before (a resumed evaluation)."""
        self._records.extend(records)

    def process(self, batch: GsvaBatch, predictions: list[SlotPredictions]) -> list[dict[str, Any]]:
        """The records of one batch (one per answer slot, in conversation then slot order)."""
        self.begin_batch(batch)
        records = [
            record for conv, prediction in enumerate(predictions) for record in self._conversation_records(batch, conv, prediction)
        ]
        self._records.extend(records)
        return records

    def evaluate(self) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
        """Every rank's records in dataset order (on every rank) and, on rank 0, their summary."""
        records = sorted(self._records, key=lambda record: record["item"])  # stable: slot order kept
        for position, record in enumerate(records):
            record["order"] = position  # dataset order within this rank; items are whole on one rank
        records = gather_objects(records)
        records.sort(key=lambda record: (record["item"], record["order"]))
        for record in records:
            del record["order"]
        return records, (self.summary(records) if is_main() else None)

    def summary(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        """What ``scripts/score.py`` recomputes from ``records.jsonl``: the family's metrics and counts."""
        return {
            "family": self.family,
            "num_records": len(records),
            "parse_failures": int(sum(record.get("parse_failures", 0) for record in records)),
            **self.summarize(records),
        }

    # ----------------------------------------------------------------- what a family decides
    def begin_batch(self, batch: GsvaBatch) -> None:
        """Per-batch preparation of ``slot_fields`` (e.g. masks decoded once per image)."""

    def slot_fields(self, batch: GsvaBatch, conv: int, slot: int, gt: np.ndarray) -> dict[str, Any]:
        """The family's own fields of one record; ``gt`` is the slot's (H, W) bool ground truth."""
        return {}

    def summarize(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        """``{"metrics": ...}`` and any other summary the family reports."""
        raise NotImplementedError

    def headline(self, summary: dict[str, Any]) -> Metrics:
        """The metrics row of ``summary`` shown first (and logged to TensorBoard)."""
        return summary["metrics"]

    def table_rows(self, summary: dict[str, Any], protocol: str) -> dict[str, Metrics]:
        return {f"GSVA ({protocol})": self.headline(summary)}

    def heading_note(self) -> str:
        """Added to the printout's first line (e.g. the metric variant)."""
        return ""

    def notes(self, summary: dict[str, Any]) -> list[str]:
        """Lines printed under the table."""
        return []

    def format_summary(self, summary: dict[str, Any], protocol: str, title: str) -> str:
        """The printout: title, table, the family's notes and the parse failures of generation."""
        heading = f"\n{title}: {summary['num_records']} expressions{self.heading_note()}"
        lines = [heading, format_metrics_table(self.table_rows(summary, protocol), self.columns)]
        lines += self.notes(summary)
        if protocol == "generate":
            lines.append(f"answers whose slots did not line up with the expressions: {summary['parse_failures']} slot(s)")
        return "\n".join(lines)

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

