"""Tiny random checkpoints of the transformers-layout backbones, written as their real directories
are (``save_pretrained`` of the model, a tokenizer with the backbone's special tokens and a
ChatML chat template), for the tests that build GSVA on them."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    InternVLConfig,
    InternVLForConditionalGeneration,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
)

from gsva.model.backbones.llava_next import default_image_processor
from gsva.model.backbones.qwen2_5_vl import QWEN_SPECIAL_TOKENS, make_chat_tokenizer
from gsva.text.special_tokens import IMAGE_PLACEHOLDER
from gsva.text.tokenizer import train_tiny_bpe

CHATML_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
INTERNVL_TOKENS = (*CHATML_TOKENS, "<img>", "</img>", "<IMG_CONTEXT>")
LLAVA_NEXT_TOKENS = (*CHATML_TOKENS, IMAGE_PLACEHOLDER)
QWEN_IMAGE_SIZE = 56
"""Qwen2.5-VL inputs: a multiple of 28 (patch 14, 2x2 merge): 4 x 4 patches, 4 image tokens."""
INTERNVL_IMAGE_SIZE = 28
"""InternVL tiles of 7 px patches: 16 patches, 4 image tokens after the pixel shuffle."""
LLAVA_NEXT_TILE = 16
LLAVA_NEXT_PINPOINTS = [[16, 32], [32, 16], [32, 32]]
LLAVA_NEXT_IMAGE_SIZE = 16
"""LLaVA-NeXT images of one 16 px tile (4 x 4 patches of 4 px): the base patch and two tiles side by side
(the image padded to 16 x 32), unpadded back to 4 x 4 with a newline per row: 16 + 4 * 5 = 36 image tokens."""
TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=1024)


def write_chat_tokenizer(directory: Path, corpus: list[str], special: tuple[str, ...]):
    """A byte-level BPE with ``special`` atomic tokens and Qwen's conventions (no BOS, eos
    ``<|im_end|>``, pad ``<|endoftext|>``, the ChatML template), saved in ``directory``."""
    return make_chat_tokenizer(train_tiny_bpe(corpus, 400, directory, extra_tokens=special), directory)


def write_tiny_qwen2_5_vl(directory: Path, corpus: list[str], seed: int = 0) -> Path:
    """A random Qwen2.5-VL checkpoint with its tokenizer in ``directory``."""
    tokenizer = write_chat_tokenizer(directory, corpus, QWEN_SPECIAL_TOKENS)
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in QWEN_SPECIAL_TOKENS}
    config = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=len(tokenizer), **TEXT, bos_token_id=None, eos_token_id=ids["<|im_end|>"],
            pad_token_id=ids["<|endoftext|>"],
            rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 10000.0},
        ),
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64, window_size=56,
                           fullatt_block_indexes=[1]),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"], tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    Qwen2_5_VLForConditionalGeneration(config).save_pretrained(str(directory))
    return directory


def write_tiny_internvl(directory: Path, corpus: list[str], seed: int = 0) -> Path:
    """A random InternVL (transformers layout) checkpoint with its tokenizer in ``directory``."""
    tokenizer = write_chat_tokenizer(directory, corpus, INTERNVL_TOKENS)
    patch = 7
    config = InternVLConfig(
        vision_config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                           image_size=INTERNVL_IMAGE_SIZE, patch_size=patch, use_mean_pooling=False),
        text_config=dict(model_type="qwen2", vocab_size=len(tokenizer), **TEXT, tie_word_embeddings=False,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id),
        image_token_id=tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>"),
        image_seq_length=(INTERNVL_IMAGE_SIZE // patch) ** 2 // 4,
        vision_feature_layer=-1,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    InternVLForConditionalGeneration(config).save_pretrained(str(directory))
    return directory


def write_tiny_llava_next(directory: Path, corpus: list[str], seed: int = 0) -> Path:
    """A random LLaVA-NeXT checkpoint (Llama decoder, CLIP tower) with its tokenizer (the ChatML
    template, as llava-v1.6-34b's) and image processor in ``directory``."""
    tokenizer = write_chat_tokenizer(directory, corpus, LLAVA_NEXT_TOKENS)
    config = LlavaNextConfig(
        vision_config=dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, image_size=LLAVA_NEXT_TILE, patch_size=4),
        text_config=dict(model_type="llama", vocab_size=len(tokenizer), **TEXT, tie_word_embeddings=False,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id),
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_PLACEHOLDER),
        image_grid_pinpoints=LLAVA_NEXT_PINPOINTS,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    LlavaNextForConditionalGeneration(config).save_pretrained(str(directory))
    default_image_processor(config).save_pretrained(str(directory))
    return directory
