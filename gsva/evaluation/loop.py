"""The evaluation loop: every answer slot scored exactly once across ranks. It knows no benchmark:
the protocol gives predictions, the benchmark's evaluator turns them into records.

Each rank takes the images ``rank, rank + world, …`` (no sampler padding, so nothing is scored
twice), runs the protocol and hands each batch to the evaluator. Records carry the
intersection/union counts, so any metric can be recomputed offline from ``records.jsonl``
(``python scripts/score.py``). Given a ``PartialRecords`` file (``gsva.evaluation.resume``), a rank
skips the images it already holds and appends each finished batch to it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from gsva.batch import GsvaBatch
from gsva.data.samples import Collator
from gsva.data.transforms import read_rgb
from gsva.distributed import is_main, rank, world_size
from gsva.evaluation.evaluator import BenchmarkEvaluator
from gsva.evaluation.overlays import render_overlay, save_overlay
from gsva.evaluation.resume import PartialRecords
from gsva.config import EvalConfig
from gsva.model.gsva import GsvaModel, SlotPredictions


def _write_overlays(batch: GsvaBatch, predictions: list[SlotPredictions], output_dir: Path, limit: int) -> int:
    """Overlay PNGs (prediction | ground truth) of the first ``limit`` conversations; returns how many."""
    written = 0
    for conv, prediction in enumerate(predictions[:limit]):
        meta = batch.metadata[conv]
        panel = render_overlay(
            read_rgb(meta["image_path"]),
            meta["expressions"],
            [m.cpu().numpy() for m in prediction.masks],
            prediction.rejected,
            [m.cpu().numpy() > 0 for m in batch.target_masks[conv]],
            batch.slot_exists[conv].tolist(),
        )
        save_overlay(output_dir / f"overlay_{meta['item']:05d}_{meta['image_id']}_{conv}.png", panel)
        written += 1
    return written


@torch.no_grad()
def run_evaluation(
    model: GsvaModel,
    dataset: Any,
    evaluator: BenchmarkEvaluator,
    options: EvalConfig,
    device: torch.device,
    tokenizer=None,
    partial: PartialRecords | None = None,
    overlay_dir: Path | None = None,
) -> None:
    """Feed every image of ``dataset`` this rank owns (but those ``partial`` holds) through the
    protocol into ``evaluator``; each finished batch is appended to ``partial``. Overlays go to
    ``overlay_dir`` (rank 0, ``options.visualize`` in all)."""
    was_training = model.training
    model.eval()
    evaluator.reset()
    done = set()
    overlays_left = options.visualize if is_main() and overlay_dir is not None else 0
    if partial is not None:
        done = partial.done_items
        evaluator.add(partial.records)
        overlays_left = max(overlays_left - partial.overlays, 0)
    pending = [item for item in range(rank(), len(dataset), world_size()) if item not in done]
    batches = [pending[start:start + options.batch_size] for start in range(0, len(pending), options.batch_size)]
    loader = DataLoader(
        dataset,
        batch_sampler=batches,
        num_workers=options.num_workers,
        collate_fn=Collator(dataset.builder.pad_token_id, dataset.builder.settings.sam_image_size),
    )
    for items, batch in zip(batches, tqdm(loader, desc=f"evaluate ({options.protocol})", disable=not is_main())):
        batch = batch.to(device)
        predictions = model.predict(batch, options.protocol, options.max_new_tokens, tokenizer)
        records = evaluator.process(batch, predictions)
        overlays = _write_overlays(batch, predictions, overlay_dir, overlays_left) if overlays_left else 0
        overlays_left -= overlays
        if partial is not None:
            partial.append(items, records, overlays)
    model.train(was_training)
