"""Model shapes the benchmarks build with random weights: the authors' tiny CPU reference
(``tiny_dims.json``, at which the original code was timed), LLaVA-7B / -13B with SAM ViT-H, and
``mid`` (the 7B widths with 2 layers, to run the 7B path on a CPU)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from gsva.config import Config, DataConfig, ModelConfig, RunConfig, TinyDims
from gsva.text.prompts import PromptSettings
from gsva.model.build import DTYPES
from gsva.pipeline import build_pipeline
from gsva.model.gsva import GsvaModel

REFERENCE_VOCAB = 32000
"""LLaMA's vocabulary; the task tokens [SEG] [REJ] <im_start> <im_end> make it 32004."""

TINY_REFERENCE_DIMS = TinyDims(
    vocab_size=REFERENCE_VOCAB,
    llm_hidden_size=256,
    llm_layers=4,
    llm_heads=4,
    llm_intermediate_size=688,
    llm_max_position_embeddings=2048,
    clip_hidden_size=128,  # intermediate 4 x 128 = 512, quick_gelu (build_tiny_llava)
    clip_layers=2,
    clip_heads=4,
    clip_patch_size=14,
    sam_embed_dim=128,
    sam_depth=2,
    sam_heads=4,
    sam_patch_size=16,
    sam_window_size=14,
    sam_global_attn_indexes=[1],
    prompt_embed_dim=256,  # = SAM neck out_chans, prompt encoder and mask decoder width
    decoder_mlp_dim=2048,
    decoder_heads=8,
    use_im_start_end=True,
)
"""The authors' tiny CPU reference model (LLaMA 256x4, CLIP 128x2 at 224 px, SAM ViT 128x2 at 1024 px)."""

LLAVA_7B_DIMS = dataclasses.replace(
    TINY_REFERENCE_DIMS,
    llm_hidden_size=4096,
    llm_layers=32,
    llm_heads=32,
    llm_intermediate_size=11008,
    clip_hidden_size=1024,  # CLIP ViT-L/14 at 224 px: intermediate 4096
    clip_layers=24,
    clip_heads=16,
)
"""LLaVA-7B (LLaMA-7B + CLIP ViT-L/14); SAM is the published ViT-H (``sam_type=vit_h``)."""

LLAVA_13B_DIMS = dataclasses.replace(
    LLAVA_7B_DIMS, llm_hidden_size=5120, llm_layers=40, llm_heads=40, llm_intermediate_size=13824
)
"""LLaVA-13B (LLaMA-13B + CLIP ViT-L/14); SAM ViT-H."""

LLAVA_7B_MID_DIMS = dataclasses.replace(LLAVA_7B_DIMS, llm_layers=2, clip_layers=2)
"""The 7B code path at a width a CPU can run: LLaMA-7B and CLIP ViT-L/14 widths with 2 layers each
and the tiny SAM encoder (the authors' harness's ``mid`` shape)."""

SHAPES = {
    "tiny": (TINY_REFERENCE_DIMS, "tiny"),
    "mid": (LLAVA_7B_MID_DIMS, "tiny"),
    "7b": (LLAVA_7B_DIMS, "vit_h"),
    "13b": (LLAVA_13B_DIMS, "vit_h"),
}
CPU_SHAPES = ("tiny", "mid")
"""Shapes whose random weights fit a CPU host (7b and 13b need CUDA)."""


def reference_config(
    shape: str, tokenizer_dir: Path, precision: str = "fp32", seed: int = 0, gradient_checkpointing: bool = False
) -> Config:
    """The config ``build_gsva`` assembles a benchmark model from (random weights, LoRA r=8 on q/v)."""
    dims, sam_type = SHAPES[shape]
    return Config(
        run=RunConfig(seed=seed),
        data=DataConfig(sam_image_size=1024, clip_image_size=224, model_max_length=1024, conversation="llava_v1"),
        model=ModelConfig(
            tokenizer_path=str(tokenizer_dir),
            sam_type=sam_type,
            tiny=dims,
            lora_r=8,
            lora_alpha=16,
            lora_dropout=0.05,
            lora_target_modules=["q_proj", "v_proj"],
            gradient_checkpointing=gradient_checkpointing,
            precision=precision,
        ),
    )


@contextmanager
def building_on(device: str, dtype: torch.dtype) -> Iterator[None]:
    """Create parameters directly on ``device`` in ``dtype`` (a 7B model is never built in fp32 on the host)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(previous)


def build_reference_model(
    shape: str, tokenizer_dir: Path, precision: str, seed: int, device: str = "cpu", gradient_checkpointing: bool = False
) -> tuple[PreTrainedTokenizerBase, GsvaModel, PromptSettings, Config]:
    """(tokenizer, GsvaModel on ``device``, prompt settings, config) of a benchmark shape, random weights;
    on CUDA the weights are created on the device in the precision's dtype."""
    cfg = reference_config(shape, tokenizer_dir, precision, seed, gradient_checkpointing)
    with building_on(device, DTYPES[precision] if device == "cuda" else torch.float32):
        pipeline = build_pipeline(cfg)
        tokenizer, model, prompts = pipeline.tokenizer, pipeline.model, pipeline.builder.prompts
    return tokenizer, model.to(device), prompts, cfg
