"""Assemble the GSVA model from a ``Config`` and its task vocabulary (the only place that reads
``cfg.model`` to build a model)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import torch
from transformers import PreTrainedModel

from gsva.config import Config
from gsva.model.gsva import GsvaModel
from gsva.model.llava_hf import is_llava_hf_config, load_llava_any
from gsva.model.mllm import build_tiny_llava
from gsva.model.sam import build_sam
from gsva.model.trainable import add_lora, apply_trainable_policy
from gsva.text.vocabulary import TaskVocabulary
from gsva.model.hf_loading import transformers_notices_silenced

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def uses_image_markers(cfg: Config) -> bool:
    """Whether the GSVA of ``cfg`` wraps its image patches in ``<im_start>``/``<im_end>``
    (``resolve_image_markers``; under ``auto`` with a random tiny LLaVA, the tiny dims' flag). Read
    from the config file alone, before anything is loaded."""
    if cfg.model.use_im_start_end != "auto":
        return cfg.model.use_im_start_end
    if cfg.model.llava_path is None:
        return cfg.model.tiny.use_im_start_end
    config_file = Path(cfg.model.llava_path) / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"LLaVA checkpoint: {config_file} not found (model.llava_path)")
    return resolve_image_markers("auto", json.loads(config_file.read_text()))


def resolve_image_markers(setting: str | bool, llava_config: Mapping[str, Any]) -> bool:
    """``model.use_im_start_end`` for the LLaVA of ``llava_config`` (its ``config.json``): true or
    false as set; ``auto`` = the original layout's ``mm_use_im_start_end``, never in the llava-hf
    layout."""
    if setting != "auto":
        return setting
    return not is_llava_hf_config(llava_config) and bool(llava_config.get("mm_use_im_start_end", False))


def build_gsva(cfg: Config, vocabulary: TaskVocabulary) -> GsvaModel:
    """The GSVA model of ``cfg`` with its trainable policy applied, its token table sized to
    ``vocabulary``.

    Parts not read from a checkpoint (new token rows, query projector, random tiny components, a
    ``model.mm_projector_init: random`` projector) are initialised from ``cfg.run.seed``, so that
    rebuilding from the same config gives the same frozen weights and a saved file of the trainable
    weights restores the whole model (a random projector is saved with them all the same).
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
    if model_cfg.use_im_start_end != "auto":
        llava.use_im_start_end = model_cfg.use_im_start_end
    if llava.use_im_start_end != vocabulary.prompts.use_im_start_end:
        raise ValueError(
            f"the LLaVA {'wraps' if llava.use_im_start_end else 'does not wrap'} its image in <im_start>/<im_end>, "
            "but the vocabulary was built for the other form"
        )
    resize_token_rows(llava.language_model, vocabulary.size, model_cfg.new_token_init)
    sam = build_sam(model_cfg.sam_type, model_cfg.sam_checkpoint, model_cfg.tiny, cfg.data.sam_image_size)
    model = GsvaModel(llava, sam, vocabulary.slot_ids, model_cfg, cfg.data.sam_image_size)
    if model_cfg.mm_projector_init == "random":
        randomise_projector(model)
    add_lora(model.mllm.language_model, model_cfg)
    apply_trainable_policy(model, model_cfg)
    if model_cfg.gradient_checkpointing:
        model.mllm.language_model.activation_checkpointing_enable()
    return model.to(dtype)


def resize_token_rows(language_model: PreTrainedModel, size: int, new_token_init: str) -> None:
    """Give the input embeddings and lm_head ``size`` rows (nothing to do when they have them).
    Added rows (``model.new_token_init``): ``mean`` = transformers' mean resizing (drawn around the
    existing rows' mean with 1e-9 times their covariance: the mean, in effect); ``normal`` =
    N(0, ``initializer_range``), what ``resize_token_embeddings`` of transformers 4.44 (the version
    the authors' released code pins) always did."""
    if size == language_model.get_input_embeddings().num_embeddings:
        return
    with transformers_notices_silenced():  # its notice describes the mean resizing documented above
        language_model.resize_token_embeddings(size, mean_resizing=new_token_init == "mean")


def randomise_projector(model: GsvaModel) -> None:
    """``model.mm_projector_init: random``: a freshly initialised projector (still frozen), which no
    checkpoint holds and so is saved with the trainable weights (``GsvaModel.frozen_in_weights``)."""
    model.mllm.reinitialise_projector()
    model.frozen_in_weights.update(f"mllm.mm_projector.{name}" for name, _ in model.mllm.mm_projector.named_parameters())
