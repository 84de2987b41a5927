"""The whole pretraining mixture on fixture files of every dataset: samples of each task are
well formed, VQA samples carry no mask, and a tiny GSVA trains on mixed and VQA-only batches."""

import math
from collections import Counter
from pathlib import Path

import pytest
from torch.utils.data import DataLoader

from gsva.data.catalog import DATASETS
from gsva.config import load_config
from gsva.data.mixture import MixtureSampler
from gsva.data.samples import Collator
from gsva.engine.trainer import train, training_stream
from gsva.pipeline import build_pipeline
from gsva.text.special_tokens import IGNORE_INDEX
from tests.conftest import REPO, tiny_config

PRETRAIN_TASKS = (
    "data.tasks={sem_seg: {weight: 9, datasets: [ade20k, cocostuff, mapillary, paco_lvis, pascal_part]}, "
    "refer_seg: {weight: 6, datasets: [refclef, refcoco, refcoco+, refcocog, grefcoco, refzom]}, "
    "vqa: {weight: 3, datasets: [llava_instruct_150k]}, reason_seg: {weight: 1, datasets: [reason_seg]}}"
)


def mixture_config(root: Path, tokenizer_dir: Path, *overrides: str):
    return tiny_config(
        root, tokenizer_dir, PRETRAIN_TASKS, "data.absent_class_rate=0.5", "data.single_target_rate=0.3",
        "data.explanatory_rate=1.0", "data.num_workers=0", *overrides,
    )


def test_pretraining_mixture_draws_every_dataset_with_well_formed_samples(every_dataset, tokenizer_dir):
    cfg = mixture_config(every_dataset, tokenizer_dir)
    pipeline = build_pipeline(cfg)
    tokenizer, builder = pipeline.tokenizer, pipeline.builder
    stream = training_stream(cfg, builder)
    seen: Counter = Counter()
    rejected_semantic = explained = 0
    seg_id, rej_id = tokenizer.convert_tokens_to_ids(["[SEG]", "[REJ]"])
    for draw in range(400):
        sample = stream[draw]
        (conversation,) = sample.conversations
        name = conversation.metadata["dataset"]
        seen[name] += 1
        supervised = [t for t, label in zip(conversation.input_ids, conversation.labels) if label != IGNORE_INDEX]
        assert supervised, name
        slots = [t for t in supervised if t in (seg_id, rej_id)]
        assert len(slots) == len(conversation.slot_exists) == conversation.target_masks.shape[0], name
        assert [t == seg_id for t in slots] == list(conversation.slot_exists), name
        assert conversation.target_masks.shape[1:] == sample.original_size
        for mask, exists in zip(conversation.target_masks, conversation.slot_exists):
            assert bool(mask.any()) == exists or (exists and DATASETS[name].task == "reason_seg"), name
        if DATASETS[name].task == "vqa":
            assert not conversation.slot_exists
        if DATASETS[name].task == "sem_seg" and not all(conversation.slot_exists):
            rejected_semantic += 1
        explained += conversation.metadata.get("explained", False)
    assert set(seen) == set(DATASETS)
    assert rejected_semantic > 0 and explained > 0
    by_task = Counter()
    for name, count in seen.items():
        by_task[DATASETS[name].task] += count
    assert by_task["sem_seg"] > by_task["refer_seg"] > by_task["vqa"] > by_task["reason_seg"]


def test_a_mixed_batch_keeps_masks_with_their_conversations(every_dataset, tokenizer_dir):
    cfg = mixture_config(every_dataset, tokenizer_dir, "optim.micro_batch_size=6")
    pipeline = build_pipeline(cfg)
    model, builder = pipeline.model, pipeline.builder
    stream = training_stream(cfg, builder)
    loader = DataLoader(stream, batch_sampler=MixtureSampler(6, 0, 1), collate_fn=Collator(builder.pad_token_id, 64))
    batches = iter(loader)
    for _ in range(3):
        batch = next(batches)
        losses = model(batch)
        assert all(math.isfinite(float(getattr(losses, key).detach())) for key in ("total", "ce", "bce", "dice"))


def shipped_pretrain_recipe(root: Path, tokenizer_dir: Path, output_dir: Path, *overrides: str):
    """configs/pretrain/gsva_vicuna7b.yaml as shipped (data mixture, losses, schedule shape), with the
    checkpoints replaced by random tiny components and a CPU-sized run."""
    return load_config(
        REPO / "configs" / "pretrain" / "gsva_vicuna7b.yaml",
        [
            f"data.dataset_dir={root}", f"model.tokenizer_path={tokenizer_dir}", f"run.output_dir={output_dir}",
            "model.llava_path=null", "model.vision_tower_path=null", "model.sam_type=tiny", "model.sam_checkpoint=null",
            "model.finetune=lora", "model.lora_r=4", "model.precision=fp32", "model.gradient_checkpointing=false",
            "data.sam_image_size=64", "data.clip_image_size=32", "data.num_workers=0",
            "optim.micro_batch_size=4", "optim.grad_accum_steps=1", "optim.global_batch_size=null", "optim.warmup_steps=1",
            "schedule.steps=4", "run.log_every=1", *overrides,
        ],
    )


@pytest.mark.slow
@pytest.mark.parametrize("tasks", ["pretrain_recipe", "vqa_only"])
def test_deepspeed_trains_on_the_mixture(every_dataset, tokenizer_dir, tmp_path, tasks):
    overrides = ["data.tasks={vqa: {weight: 1, datasets: [llava_instruct_150k]}}"] if tasks == "vqa_only" else []
    cfg = shipped_pretrain_recipe(every_dataset, tokenizer_dir, tmp_path / "run", *overrides)
    result = train(cfg)
    assert len(result.history) == 4
    assert all(math.isfinite(record["total"]) for record in result.history)
    if tasks == "vqa_only":
        assert all(record["bce"] == 0 and record["dice"] == 0 for record in result.history)
    else:
        assert any(record["dice"] > 0 for record in result.history)
    assert (tmp_path / "run" / "final" / "model.safetensors").is_file()
