"""The evaluation loop: every answer slot scored exactly once across ranks, records gathered in
dataset order, metrics computed once (``gsva.engine.benchmarks.summarize``).

Each rank takes the images ``rank, rank + world, …`` (no sampler padding, so nothing is scored
twice), runs the chosen protocol and turns each answer slot into a record. Records carry the
intersection/union counts, so any metric can be recomputed offline from ``records.jsonl``
(``python scripts/score.py``).
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from gsva.batch import GsvaBatch
from gsva.data.refer_seg_dataset import ReferSegDataset
from gsva.data.samples import Collator
from gsva.data.transforms import read_rgb
from gsva.engine.distributed import gather_objects, is_main, rank, world_size
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
) -> list[dict[str, Any]]:
    """Score every slot of ``dataset`` (an evaluation dataset of ``gsva.engine.benchmarks``) once;
    returns ALL ranks' records, in dataset order, on every rank."""
    if settings.protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {settings.protocol!r}; expected one of {PROTOCOLS}")
    was_training = model.training
    model.eval()
    shard = Subset(dataset, list(range(rank(), len(dataset), world_size())))
    loader = DataLoader(
        shard,
        batch_size=settings.batch_size,
        num_workers=settings.num_workers,
        collate_fn=Collator(dataset.builder.pad_token_id, dataset.builder.settings.sam_image_size),
    )
    overlay_dir = Path(settings.output_dir) / "overlays" if settings.output_dir else None
    overlays_left = settings.visualize if is_main() else 0
    records: list[dict[str, Any]] = []
    for batch in tqdm(loader, desc=f"evaluate ({settings.protocol})", disable=not is_main()):
        batch = batch.to(device)
        if settings.protocol == "teacher-forced":
            predictions = model.predict_teacher_forced(batch)
        else:
            predictions = model.generate(batch, settings.max_new_tokens, tokenizer)
        objects = _objects_masks(dataset, batch)
        for conv, prediction in enumerate(predictions):
            extra = {"generated_text": prediction.text, "parse_failures": prediction.parse_failures}
            objects_of_image = objects.get(batch.metadata[conv]["image_id"])
            records.extend(_score_conversation(batch, conv, prediction.rejected, prediction.masks, extra, objects_of_image))
            if overlay_dir is not None and overlays_left > 0:
                _write_overlays(batch, conv, prediction.rejected, prediction.masks, overlay_dir)
                overlays_left -= 1
    model.train(was_training)
    for position, record in enumerate(records):
        record["order"] = position  # slot order within this rank; items are whole on one rank
    records = gather_objects(records)
    records.sort(key=lambda record: (record["item"], record["order"]))
    for record in records:
        del record["order"]
    return records


def _write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path`` and rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    os.replace(partial, path)


def write_json_atomic(path: str | Path, payload: Any) -> None:
    """Write JSON atomically."""
    _write_text_atomic(path, json.dumps(payload, indent=2))


def write_records(path: str | Path, records: list[dict[str, Any]]) -> None:
    """One JSON object per expression, written atomically."""
    _write_text_atomic(path, "".join(json.dumps(record) + "\n" for record in records))
