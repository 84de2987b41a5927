"""GSVA on the transformers-layout backbones (Qwen2.5-VL, InternVL, LLaVA-NeXT), through the same
``build_pipeline`` a user's config goes through: trains with LoRA on the language model only,
predicts under both protocols, and exports a merged model directory in the backbone's own layout
that loads back to the same predictions."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from gsva.config import ConfigError, EvalConfig, load_config
from gsva.data.refer_seg.dataset import ReferSegDataset
from gsva.data.refer_seg.reader import ReferIndex
from gsva.data.samples import Collator
from gsva.demo.components import tokenizer_corpus
from gsva.demo.synthetic import COLOURS
from gsva.engine.export import write_merged
from gsva.evaluation.benchmarks import parse_benchmark
from gsva.evaluation.report import evaluate_benchmark
from gsva.evaluation.settings import EvalSettings
from gsva.inference import Segmenter
from gsva.model.backbones import CHAT_TEMPLATE_ONLY
from gsva.model.directory import load_trainable_weights, save_pretrained
from gsva.pipeline import build_pipeline
from gsva.text.special_tokens import IMAGE_TOKEN_INDEX
from tests.backbone_checkpoints import (
    INTERNVL_IMAGE_SIZE,
    LLAVA_NEXT_IMAGE_SIZE,
    QWEN_IMAGE_SIZE,
    write_tiny_internvl,
    write_tiny_llava_next,
    write_tiny_qwen2_5_vl,
)
from tests.conftest import TINY_CONFIG, fit_one_batch

CHECKPOINTS = {
    "qwen2_5_vl": (write_tiny_qwen2_5_vl, QWEN_IMAGE_SIZE),
    "internvl": (write_tiny_internvl, INTERNVL_IMAGE_SIZE),
    "llava_next": (write_tiny_llava_next, LLAVA_NEXT_IMAGE_SIZE),
}


@pytest.fixture(scope="module", params=sorted(CHECKPOINTS))
def checkpoint(request, tmp_path_factory) -> tuple[str, Path, int]:
    """(kind, checkpoint directory, image side) of a tiny random backbone."""
    write, image_size = CHECKPOINTS[request.param]
    directory = write(tmp_path_factory.mktemp(request.param), tokenizer_corpus(list(COLOURS), "llava_v1"))
    return request.param, directory, image_size


def backbone_config(checkpoint, synthetic_root: Path, *overrides: str):
    kind, directory, image_size = checkpoint
    return load_config(TINY_CONFIG, [
        f"data.dataset_dir={synthetic_root}", "data.synthetic=null", "components.enabled=false",
        f"model.llava_path={directory}", "model.tokenizer_path=null", "data.conversation=chat_template",
        f"data.clip_image_size={image_size}", "model.finetune=lora", "model.lora_r=4", *overrides,
    ])


def batch_of(pipeline, items=(0, 1), train=True):
    cfg = pipeline.cfg
    dataset = ReferSegDataset(ReferIndex(cfg.data.dataset_dir), "train" if train else "val", pipeline.builder, train)
    samples = [dataset.sample(i, random.Random(i)) if train else dataset[i] for i in items]
    return Collator(pipeline.tokenizer.pad_token_id, cfg.data.sam_image_size)(samples)


def test_the_backbone_is_chosen_from_the_checkpoint_and_prompted_with_its_chat_template(checkpoint, synthetic_root):
    kind, _, _ = checkpoint
    pipeline = build_pipeline(backbone_config(checkpoint, synthetic_root))
    assert type(pipeline.model.mllm).__module__ == f"gsva.model.backbones.{kind}"
    sample = batch_of(pipeline, items=(0,))
    text = pipeline.tokenizer.decode([t for t in sample.input_ids[0].tolist() if t >= 0])
    assert text.startswith("<|im_start|>system") and "<|im_start|>assistant\n" in text
    assert {"qwen2_5_vl": "<|vision_start|><|vision_end|>", "internvl": "<img></img>", "llava_next": "user\n\n"}[kind] in text
    answer = pipeline.tokenizer.decode([t for t in sample.labels[0].tolist() if t >= 0])
    assert answer.endswith("<|im_end|>\n") and ("[SEG]" in answer or "[REJ]" in answer)


def test_llavas_own_conversations_are_taken_by_llava_next_only(checkpoint, synthetic_root):
    """llava-v1.6-vicuna was tuned on Vicuna-v1's conversations: LLaVA-NeXT may be prompted with
    ``llava_v1``; Qwen2.5-VL and InternVL are refused anything but their chat template."""
    kind, _, _ = checkpoint
    cfg = backbone_config(checkpoint, synthetic_root, "data.conversation=llava_v1")
    if kind in CHAT_TEMPLATE_ONLY:
        with pytest.raises(ConfigError, match="data.conversation"):
            build_pipeline(cfg)
        return
    pipeline = build_pipeline(cfg)
    batch = batch_of(pipeline, items=(0,))
    text = pipeline.tokenizer.decode([t for t in batch.input_ids[0].tolist() if t >= 0])
    assert "A chat between a curious human" in text and " ASSISTANT:" in text and "<|im_start|>" not in text
    assert int((batch.input_ids[0] == IMAGE_TOKEN_INDEX).sum()) == 1
    answer = pipeline.tokenizer.decode([t for t in batch.labels[0].tolist() if t >= 0])
    assert answer.endswith("</s>") and ("[SEG]" in answer or "[REJ]" in answer)
    assert torch.isfinite(pipeline.model(batch).total)


def test_one_training_step_moves_lora_of_the_language_model_only(checkpoint, synthetic_root):
    pipeline = build_pipeline(backbone_config(checkpoint, synthetic_root))
    model = pipeline.model
    losses = model(batch_of(pipeline))
    assert all(torch.isfinite(value) for value in (losses.total, losses.ce, losses.bce, losses.dice))
    losses.total.backward()
    trainable = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    with_grad = {name for name, parameter in model.named_parameters() if parameter.grad is not None and parameter.grad.abs().sum() > 0}
    lora = {name for name in trainable if "lora_" in name}
    assert lora and all(name.startswith("mllm.language_model.model.layers.") for name in lora)
    assert with_grad <= trainable and any("lora_B" in name for name in with_grad)
    assert not any(name.startswith(("mllm.visual", "mllm.vision_tower", "mllm.mm_projector")) for name in trainable)
    assert any("mask_decoder" in name for name in with_grad)


def test_both_protocols_and_the_merged_export_round_trip(checkpoint, synthetic_root, tmp_path):
    cfg = backbone_config(checkpoint, synthetic_root)
    pipeline = build_pipeline(cfg)
    model = pipeline.model.eval()
    with torch.no_grad():  # LoRA's B starts at zero: give the adapters something to merge
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0.0, 0.05)
    batch = batch_of(pipeline, items=(0, 1), train=False)
    taught = model.predict(batch, "teacher-forced")
    generated = model.predict(batch, "generate", max_new_tokens=6, tokenizer=pipeline.tokenizer)
    assert len(taught) == len(generated) == batch.input_ids.shape[0]
    for predictions in (taught, generated):
        for conv, prediction in enumerate(predictions):
            slots = int(batch.slot_exists[conv].numel())
            assert prediction.masks.shape[0] == len(prediction.rejected) == slots
    assert all(prediction.text for prediction in generated)

    merged_cfg, merged = write_merged(model, cfg, tmp_path / "merged")
    save_pretrained(model, merged_cfg, tmp_path / "merged")
    assert merged == 4  # q_proj and v_proj of the 2 decoder layers
    assert (tmp_path / "merged" / "llava" / "config.json").is_file() and not (tmp_path / "merged" / "clip").exists()
    reloaded = build_pipeline(merged_cfg)
    load_trainable_weights(reloaded.model, tmp_path / "merged")
    again = reloaded.model.eval().predict(batch, "teacher-forced")
    for before, after in zip(taught, again):
        assert before.rejected == after.rejected
        assert torch.equal(before.masks, after.masks)


def test_a_resumable_evaluation_report_on_the_backbone(checkpoint, synthetic_root, tmp_path):
    pipeline = build_pipeline(backbone_config(checkpoint, synthetic_root))
    weights = save_pretrained(pipeline.model, pipeline.cfg, tmp_path / "model")
    settings = EvalSettings(EvalConfig(batch_size=2, visualize=1), output_root=str(tmp_path / "eval"), weights=str(weights))
    summary = evaluate_benchmark(
        pipeline.model, pipeline.builder, parse_benchmark("grefcoco:val"), synthetic_root, settings, torch.device("cpu")
    )
    report = settings.report_dir("grefcoco", "val")
    assert summary["num_records"] > 0 and (report / "metrics.json").is_file()
    assert len(list((report / "overlays").glob("*.png"))) == 1


def test_inference_serves_a_model_directory_of_the_backbone(checkpoint, synthetic_root, tmp_path):
    pipeline = build_pipeline(backbone_config(checkpoint, synthetic_root))
    save_pretrained(pipeline.model, pipeline.cfg, tmp_path / "model")
    segmenter = Segmenter.load(tmp_path / "model", torch.device("cpu"))
    image = np.zeros((40, 48, 3), dtype=np.uint8)
    asked = segmenter.ask("red shapes, blue", reasoning=False, question_template="please", size=image.shape[:2])
    for protocol in ("teacher-forced", "generate"):
        (prediction,) = segmenter.predict([image], [asked.query], protocol, max_new_tokens=6)
        assert prediction.masks.shape == (2, 40, 48) and len(prediction.rejected) == 2


def test_gsva_learns_a_batch_on_the_backbone(checkpoint, synthetic_root):
    """LoRA, the new token rows, the query projector and the mask decoder, trained on one batch,
    drive its loss down (the whole-demo runs on a tiny Qwen2.5-VL are in docs/backbones.md)."""
    pipeline = build_pipeline(backbone_config(checkpoint, synthetic_root, "model.lora_r=8"))
    model, batch = pipeline.model, batch_of(pipeline, items=(0, 1, 2, 3))
    losses = [step["total"] for step in fit_one_batch(model, batch, steps=30)]
    assert losses[-1] < 0.5 * losses[0], losses
