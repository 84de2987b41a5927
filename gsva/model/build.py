"""Assemble the GSVA model from a ``Config`` and its task vocabulary (the only place that reads
``cfg.model`` to build a model)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import torch
from transformers import PreTrainedModel

from gsva.config import Config, ConfigError
from gsva.model.gsva import GsvaModel
from gsva.model.backbones import CHAT_TEMPLATE_ONLY, IMAGE_MARKERS, load_backbone, resolve_backbone
from gsva.model.mllm import LlavaModel, build_tiny_llava
from gsva.model.mask_head import build_visual_model
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


def backbone_image_marker(cfg: Config) -> str | None:
    """How the backbone of ``cfg`` writes the image into a chat-template prompt (None for LLaVA,
    whose marker follows ``uses_image_markers``). Read from the config file alone."""
    return IMAGE_MARKERS.get(resolve_backbone(cfg.model.backbone, cfg.model.llava_path))


def resolve_image_markers(setting: str | bool, llava_config: Mapping[str, Any]) -> bool:
    """``model.use_im_start_end`` for the LLaVA of ``llava_config`` (its ``config.json``): true or
    false as set; ``auto`` = the original layout's ``mm_use_im_start_end`` (never in a
    transformers-layout checkpoint: llava-hf, Qwen2.5-VL, InternVL, LLaVA-NeXT)."""
    if setting != "auto":
        return setting
    return "vision_config" not in llava_config and bool(llava_config.get("mm_use_im_start_end", False))


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
    kind = resolve_backbone(model_cfg.backbone, model_cfg.llava_path)
    check_backbone_settings(cfg, kind)
    if model_cfg.llava_path is not None:
        mllm = load_backbone(kind, model_cfg.llava_path, model_cfg.vision_tower_path, dtype, cfg.data.clip_image_size)
    else:
        mllm = build_tiny_llava(model_cfg.tiny, vocabulary.base_size, cfg.data.clip_image_size, use_im_start_end=False)
    if kind in ("llava", "llava_hf"):
        check_image_markers(mllm, model_cfg.use_im_start_end, vocabulary.prompts.use_im_start_end)
    resize_token_rows(mllm.language_model, vocabulary.size, model_cfg.new_token_init)
    sam = build_visual_model(model_cfg, cfg.data.sam_image_size)
    model = GsvaModel(mllm, sam, vocabulary.slot_ids, model_cfg, cfg.data.sam_image_size)
    if model_cfg.mm_projector_init == "random":
        randomise_projector(model)
    add_lora(model.mllm.language_model, model_cfg)
    apply_trainable_policy(model, model_cfg)
    if model_cfg.gradient_checkpointing:
        model.mllm.language_model.activation_checkpointing_enable()
    return model.to(dtype)


def check_backbone_settings(cfg: Config, kind: str) -> None:
    """Settings that only one kind of backbone has: ConfigError naming the key otherwise."""
    model_cfg = cfg.model
    if cfg.model.llava_path is None and kind != "llava":
        raise ConfigError(f"model.backbone={kind!r} needs model.llava_path (random tiny models are LLaVA only)")
    if kind in CHAT_TEMPLATE_ONLY and cfg.data.conversation != "chat_template":
        raise ConfigError(
            f"data.conversation={cfg.data.conversation!r}: a {kind} backbone is prompted with its checkpoint's chat "
            "template; set data.conversation=chat_template"
        )
    if kind not in ("llava", "llava_hf"):
        llava_only = {"model.mm_projector_init": model_cfg.mm_projector_init != "pretrained", "model.use_im_start_end": model_cfg.use_im_start_end is True}
        for key, changed in llava_only.items():
            if changed:
                raise ConfigError(f"{key} applies to LLaVA backbones only (this one is {kind!r}); leave it at its default")


def check_image_markers(llava: LlavaModel, setting: str | bool, vocabulary_wraps: bool) -> None:
    """Apply ``model.use_im_start_end`` to ``llava`` and check that the vocabulary was built for it."""
    if setting != "auto":
        llava.use_im_start_end = setting
    if llava.use_im_start_end != vocabulary_wraps:
        raise ValueError(
            f"the LLaVA {'wraps' if llava.use_im_start_end else 'does not wrap'} its image in <im_start>/<im_end>, "
            "but the vocabulary was built for the other form"
        )


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
