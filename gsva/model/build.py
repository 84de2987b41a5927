"""Assemble the GSVA model from a ``Config`` and its task vocabulary (the only place that reads
``cfg.model`` to build a model)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from gsva.config import Config
from gsva.model.gsva import GsvaModel
from gsva.model.llava_hf import is_llava_hf_config, load_llava_any
from gsva.model.mllm import build_tiny_llava
from gsva.model.sam import build_sam
from gsva.model.trainable import add_lora, apply_trainable_policy
from gsva.text.vocabulary import TaskVocabulary

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def uses_image_markers(cfg: Config) -> bool:
    """Whether the LLaVA of ``cfg`` wraps its image patches in ``<im_start>``/``<im_end>`` (the
    original layout's ``mm_use_im_start_end``; never in the llava-hf layout; the tiny dims' flag
    for a random LLaVA). Read from the config file alone, before anything is loaded."""
    if cfg.model.llava_path is None:
        return cfg.model.tiny.use_im_start_end
    config_file = Path(cfg.model.llava_path) / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"LLaVA checkpoint: {config_file} not found (model.llava_path)")
    raw = json.loads(config_file.read_text())
    return not is_llava_hf_config(raw) and bool(raw.get("mm_use_im_start_end", False))


def build_gsva(cfg: Config, vocabulary: TaskVocabulary) -> GsvaModel:
    """The GSVA model of ``cfg`` with its trainable policy applied, its token table sized to
    ``vocabulary``.

    Parts not read from a checkpoint (new token rows, query projector, random tiny components) are
    initialised from ``cfg.run.seed``, so that rebuilding from the same config gives the same frozen
    weights and a saved file of the trainable weights restores the whole model.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.run.seed)
        return _build(cfg, vocabulary)


def _build(cfg: Config, vocabulary: TaskVocabulary) -> GsvaModel:
    model_cfg = cfg.model
    dtype = DTYPES[model_cfg.precision]
    if model_cfg.llava_path is not None:
        llava = load_llava_any(model_cfg.llava_path, model_cfg.vision_tower_path, dtype)
    else:
        llava = build_tiny_llava(model_cfg.tiny, vocabulary.base_size, cfg.data.clip_image_size, use_im_start_end=False)
    if llava.use_im_start_end != vocabulary.prompts.use_im_start_end:
        raise ValueError(
            f"the LLaVA {'wraps' if llava.use_im_start_end else 'does not wrap'} its image in <im_start>/<im_end>, "
            "but the vocabulary was built for the other form"
        )
    if vocabulary.size != llava.language_model.get_input_embeddings().num_embeddings:
        llava.language_model.resize_token_embeddings(vocabulary.size)
    sam = build_sam(model_cfg.sam_type, model_cfg.sam_checkpoint, model_cfg.tiny, cfg.data.sam_image_size)
    model = GsvaModel(llava, sam, vocabulary.slot_ids, model_cfg, cfg.data.sam_image_size)
    add_lora(model.mllm.language_model, model_cfg)
    apply_trainable_policy(model, model_cfg)
    if model_cfg.gradient_checkpointing:
        model.mllm.language_model.activation_checkpointing_enable()
    return model.to(dtype)
