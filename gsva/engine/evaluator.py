"""The evaluation loop: every answer slot scored exactly once across ranks, records gathered in
dataset order, metrics computed once (``gsva.engine.benchmarks.summarize``).

Each rank takes the images ``rank, rank + world, …`` (no sampler padding, so nothing is scored
twice), runs the chosen protocol and turns each answer slot into a record. Records carry the
intersection/union counts, so any metric can be recomputed offline from ``records.jsonl``
(``python scripts/score.py``). Given a ``PartialRecords`` file (``gsva.engine.eval_resume``), a
rank skips the images it already holds and appends each finished batch to it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from gsva.batch import GsvaBatch
from gsva.data.refer_seg_dataset import ReferSegDataset
from gsva.data.samples import Collator
from gsva.data.transforms import read_rgb
from gsva.engine.distributed import gather_objects, is_main, rank, world_size
from gsva.engine.eval_resume import PartialRecords
from gsva.engine.visualize import render_overlay, save_overlay
from gsva.benchmark_metrics import box_iou, mask_box
from gsva.metrics import score_expression
from gsva.model.gsva import GsvaModel

PROTOCOLS = ("teacher-forced", "generate")


@dataclass
class EvalSettings:
    protocol: str = "teacher-forced"
    batch_size: int = 4
    max_new_tokens: int = 128
    num_workers: int = 0
    visualize: int = 0
    output_dir: str | None = None
    weights: str | None = None
    """The weights file being scored: with ``output_dir``, an interrupted evaluation resumes."""


def _objects_masks(dataset: Any, batch: GsvaBatch) -> dict[Any, np.ndarray]:
    """image id -> union of all its objects (the always-[SEG] baseline), decoded once per image of
    the batch; empty for datasets without object annotations."""
    if not isinstance(dataset, ReferSegDataset):
        return {}
    image_ids = {meta["image_id"] for meta in batch.metadata}
    return {image_id: dataset.objects_mask(image_id) for image_id in image_ids}


def _score_conversation(
    batch: GsvaBatch,
    conv: int,
    rejected: list[bool],
    masks: torch.Tensor,
    extra: dict[str, Any],
    objects: np.ndarray | None,
) -> list[dict[str, Any]]:
    """One record per answer slot: the score counts, the box IoU of the masks (REC), the trivial
    baselines when ``objects`` (the union of all objects of the image) is given, and ``extra``
    (protocol outputs: the generated text on every slot, the conversation's parse failures on its
    first slot only)."""
    meta = batch.metadata[conv]
    targets = batch.target_masks[conv].cpu().numpy() > 0
    records = []
    for slot, kind in enumerate(meta["kinds"]):
        gt, predicted = targets[slot], masks[slot].cpu().numpy()
        score = score_expression(predicted, gt, rejected[slot], kind)
        effective = None if rejected[slot] else mask_box(predicted)
        record = {
            "item": meta["item"],
            "image_id": meta["image_id"],
            "key": meta["keys"][slot],
            "expression": meta["expressions"][slot],
            **dataclasses.asdict(score),
            "box_iou": box_iou(effective, mask_box(gt)),
            **extra,
        }
        if slot > 0:
            record["parse_failures"] = 0
        if "class_ids" in meta:
            record["class_id"] = meta["class_ids"][slot]
        if objects is not None:
            record["always_rej"] = dataclasses.asdict(score_expression(np.zeros_like(gt), gt, True, kind))
            record["always_seg_union"] = dataclasses.asdict(score_expression(objects, gt, False, kind))
        records.append(record)
    return records


def _write_overlays(batch: GsvaBatch, conv: int, rejected: list[bool], masks: torch.Tensor, output_dir: Path) -> None:
    meta = batch.metadata[conv]
    panel = render_overlay(
        read_rgb(meta["image_path"]),
        meta["expressions"],
        [m.cpu().numpy() for m in masks],
        rejected,
        [m.cpu().numpy() > 0 for m in batch.target_masks[conv]],
        batch.slot_exists[conv].tolist(),
    )
    save_overlay(output_dir / f"overlay_{meta['item']:05d}_{meta['image_id']}_{conv}.png", panel)


@torch.no_grad()
def run_evaluation(
    model: GsvaModel,
    dataset: Any,
    settings: EvalSettings,
    device: torch.device,
    tokenizer=None,
    partial: PartialRecords | None = None,
) -> list[dict[str, Any]]:
    """Score every slot of ``dataset`` (an evaluation dataset of ``gsva.engine.benchmarks``) once;
    returns ALL ranks' records, in dataset order, on every rank. With ``partial``, this rank's
    images already in it are not evaluated again, and each finished batch is appended to it."""
    if settings.protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {settings.protocol!r}; expected one of {PROTOCOLS}")
    was_training = model.training
    model.eval()
    done = partial.done_items if partial is not None else set()
    pending = [item for item in range(rank(), len(dataset), world_size()) if item not in done]
    batches = [pending[start:start + settings.batch_size] for start in range(0, len(pending), settings.batch_size)]
    loader = DataLoader(
        dataset,
        batch_sampler=batches,
        num_workers=settings.num_workers,
        collate_fn=Collator(dataset.builder.pad_token_id, dataset.builder.settings.sam_image_size),
    )
    overlay_dir = Path(settings.output_dir) / "overlays" if settings.output_dir else None
    overlays_left = (settings.visualize - (partial.overlays if partial is not None else 0)) if is_main() else 0
    records: list[dict[str, Any]] = list(partial.records) if partial is not None else []
    for items, batch in zip(batches, tqdm(loader, desc=f"evaluate ({settings.protocol})", disable=not is_main())):
        batch = batch.to(device)
        if settings.protocol == "teacher-forced":
            predictions = model.predict_teacher_forced(batch)
        else:
            predictions = model.generate(batch, settings.max_new_tokens, tokenizer)
        objects = _objects_masks(dataset, batch)
        batch_records: list[dict[str, Any]] = []
        overlays = 0
        for conv, prediction in enumerate(predictions):
            extra = {"generated_text": prediction.text, "parse_failures": prediction.parse_failures}
            objects_of_image = objects.get(batch.metadata[conv]["image_id"])
            batch_records.extend(_score_conversation(batch, conv, prediction.rejected, prediction.masks, extra, objects_of_image))
            if overlay_dir is not None and overlays < overlays_left:
                _write_overlays(batch, conv, prediction.rejected, prediction.masks, overlay_dir)
                overlays += 1
        overlays_left -= overlays
        records.extend(batch_records)
        if partial is not None:
            partial.append(items, batch_records, overlays)
    model.train(was_training)
    records.sort(key=lambda record: record["item"])  # stable: slot order within an item is kept
    for position, record in enumerate(records):
        record["order"] = position  # dataset order within this rank; items are whole on one rank
    records = gather_objects(records)
    records.sort(key=lambda record: (record["item"], record["order"]))
    for record in records:
        del record["order"]
    return records
