"""Assemble tokenizer + GSVA model from a ``Config`` (the only place that reads ``cfg.model``)."""

from __future__ import annotations

import torch
from transformers import PreTrainedTokenizerBase

from gsva.config import Config
from gsva.data.conversation import get_template
from gsva.data.prompts import PromptSettings
from gsva.data.tokenizer import add_task_tokens, load_tokenizer, task_token_strings
from gsva.model.gsva import GsvaModel, SlotTokenIds
from gsva.model.llava_hf import load_llava_any
from gsva.model.mllm import build_tiny_llava
from gsva.model.sam import build_sam
from gsva.model.trainable import add_lora, apply_trainable_policy
from gsva.special_tokens import REJ_TOKEN

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def build_gsva(cfg: Config) -> tuple[PreTrainedTokenizerBase, GsvaModel, PromptSettings]:
    """Tokenizer with the task tokens, the GSVA model with its trainable policy applied, and the
    prompt settings that match them.

    Parts not read from a checkpoint (new token rows, query projector, random tiny components) are
    initialised from ``cfg.run.seed``, so that rebuilding from the same config gives the same frozen
    weights and a saved file of the trainable weights restores the whole model.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.run.seed)
        return _build(cfg)


def _build(cfg: Config) -> tuple[PreTrainedTokenizerBase, GsvaModel, PromptSettings]:
    model_cfg = cfg.model
    dtype = DTYPES[model_cfg.precision]
    tokenizer_path = model_cfg.tokenizer_path or model_cfg.llava_path
    if tokenizer_path is None:
        raise ValueError("model.tokenizer_path (or model.llava_path) must name a tokenizer directory")
    tokenizer = load_tokenizer(tokenizer_path, cfg.data.model_max_length)
    if model_cfg.llava_path is not None:
        llava = load_llava_any(model_cfg.llava_path, model_cfg.vision_tower_path, dtype)
    else:
        llava = build_tiny_llava(model_cfg.tiny, len(tokenizer), cfg.data.clip_image_size, use_im_start_end=False)
    tokens = task_token_strings(
        model_cfg.seg_token_mode, model_cfg.num_individual_seg_tokens, model_cfg.use_rej_token, llava.use_im_start_end
    )
    ids = add_task_tokens(tokenizer, tokens)
    if len(tokenizer) != llava.language_model.get_input_embeddings().num_embeddings:
        llava.language_model.resize_token_embeddings(len(tokenizer))
    seg_tokens = [token for token in tokens if token.startswith("[SEG")]
    slot_ids = SlotTokenIds(
        seg_ids=tuple(ids[token] for token in seg_tokens),
        rej_id=ids.get(REJ_TOKEN),
        eos_id=tokenizer.eos_token_id,
        pad_id=tokenizer.pad_token_id,
    )
    sam = build_sam(model_cfg.sam_type, model_cfg.sam_checkpoint, model_cfg.tiny, cfg.data.sam_image_size)
    model = GsvaModel(llava, sam, slot_ids, model_cfg, cfg.data.sam_image_size)
    add_lora(model.mllm.language_model, model_cfg)
    apply_trainable_policy(model, model_cfg)
    if model_cfg.gradient_checkpointing:
        model.mllm.language_model.activation_checkpointing_enable()
    prompts = PromptSettings(
        template=get_template(cfg.data.conversation),
        seg_tokens=seg_tokens,
        use_im_start_end=llava.use_im_start_end,
        use_rej_token=model_cfg.use_rej_token,
    )
    return tokenizer, model.to(dtype), prompts
