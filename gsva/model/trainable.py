"""The one place that decides which parameters GSVA trains.

LoRA (peft) on the attention projections named in ``lora_target_modules``; token embeddings and
lm_head (the new ``[SEG]``/``[REJ]`` rows live there); the mask decoder of SAM or SAM2
(``model.mask_decoder``; SAM2's includes its projections of the high-resolution feature levels);
the query projector. Frozen: the LLM base weights, CLIP, the mm projector, SAM's image and prompt
encoders (SAM2's vision encoder, prompt encoder and no-memory embedding).
``model.finetune`` chooses the LLM's part: ``lora`` as above, ``full`` the whole LLM, ``frozen``
none of it (embeddings and lm_head included).
"""

from __future__ import annotations

from peft import LoraConfig, inject_adapter_in_model
from torch import nn

from gsva.config import ModelConfig

SAM_SIDE_TRAINED = ("visual_model.mask_decoder.", "query_projector.")
"""Trained whatever the LLM policy: the mask decoder (SAM's or SAM2's, both ``visual_model.mask_decoder``)
and the query projector that feeds it (the SAM side of the model, with its own learning rate in
training)."""
LLM_TRAINED_WITH_LORA = ("embed_tokens", "lm_head", "lora_")


def add_lora(language_model: nn.Module, cfg: ModelConfig) -> None:
    """Inject LoRA adapters in place (no wrapper module) when ``cfg.finetune`` is ``lora``."""
    if cfg.finetune != "lora":
        return
    lora = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=list(cfg.lora_target_modules),
        bias="none",
    )
    inject_adapter_in_model(lora, language_model)


def is_trainable(name: str, cfg: ModelConfig) -> bool:
    """Whether parameter ``name`` of ``GsvaModel`` is trained under ``cfg``'s policy."""
    if name.startswith(SAM_SIDE_TRAINED):
        return True
    if not name.startswith("mllm.language_model."):
        return False
    if cfg.finetune != "lora":
        return cfg.finetune == "full"
    return any(part in name for part in LLM_TRAINED_WITH_LORA)


def apply_trainable_policy(model: nn.Module, cfg: ModelConfig) -> list[str]:
    """Set ``requires_grad`` on every parameter of ``model``; returns the trained names."""
    trained = []
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(is_trainable(name, cfg))
        if parameter.requires_grad:
            trained.append(name)
    return trained
