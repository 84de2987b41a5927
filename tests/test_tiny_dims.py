"""The benchmarks build GSVA at exactly the authors' tiny reference dimensions.

The reference dims are in ``tests/fixtures/tiny_dims.json`` (those at which the authors' code is
timed) and the parameter list of that model, in their release's names, in
``tests/fixtures/gsva_released_keys_tiny.json`` (compared name by name).
"""

import json
from pathlib import Path

import pytest
import torch

from gsva.bench.shapes import build_reference_model
from gsva.config import TinyDims
from gsva.model.mllm import build_tiny_llava
from gsva.model.released import released_name
from gsva.model.sam import build_tiny_sam

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def bench_model(reference_tokenizer_dir):
    """(tokenizer, model in eval mode, prompts) of the benchmarks' tiny reference model."""
    tokenizer, model, prompts, _ = build_reference_model("tiny", reference_tokenizer_dir, "fp32", seed=0)
    return tokenizer, model.eval(), prompts


def _ours(released: str) -> str:
    name = released_name(released, "gsva-bin")
    assert name is not None, f"no mapping for released key {released}"
    return name


def test_bench_model_key_shapes(bench_model):
    tokenizer, model, prompts = bench_model
    shapes = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    expected = {
        "mllm.language_model.model.embed_tokens.weight": (32004, 256),
        "mllm.language_model.lm_head.weight": (32004, 256),
        "mllm.language_model.model.layers.3.self_attn.q_proj.lora_A.default.weight": (8, 256),
        "mllm.language_model.model.layers.3.self_attn.q_proj.lora_B.default.weight": (256, 8),
        "mllm.language_model.model.layers.0.self_attn.v_proj.lora_A.default.weight": (8, 256),
        "mllm.language_model.model.layers.0.self_attn.v_proj.lora_B.default.weight": (256, 8),
        "mllm.language_model.model.layers.0.mlp.gate_proj.weight": (688, 256),
        "mllm.vision_tower.embeddings.patch_embedding.weight": (128, 3, 14, 14),
        "mllm.vision_tower.embeddings.position_embedding.weight": (257, 128),
        "mllm.vision_tower.encoder.layers.1.mlp.fc1.weight": (512, 128),
        "mllm.mm_projector.weight": (256, 128),
        "visual_model.image_encoder.patch_embed.proj.weight": (128, 3, 16, 16),
        "visual_model.image_encoder.pos_embed": (1, 64, 64, 128),
        "visual_model.image_encoder.blocks.0.attn.rel_pos_h": (27, 32),  # window 14
        "visual_model.image_encoder.blocks.1.attn.rel_pos_h": (127, 32),  # global over 64x64
        "visual_model.image_encoder.neck.0.weight": (256, 128, 1, 1),
        "visual_model.mask_decoder.transformer.layers.1.mlp.lin1.weight": (2048, 256),
        "visual_model.mask_decoder.transformer.layers.0.cross_attn_token_to_image.q_proj.weight": (128, 256),
        "visual_model.mask_decoder.transformer.final_attn_token_to_image.out_proj.weight": (256, 128),
        "visual_model.mask_decoder.output_hypernetworks_mlps.3.layers.2.weight": (32, 256),
        "query_projector.0.weight": (256, 256),
        "query_projector.2.weight": (256, 256),
    }
    assert {name: shapes.get(name) for name in expected} == expected
    assert not any(name.startswith("mllm.language_model.model.layers.4.") for name in shapes)
    assert not any(name.startswith("mllm.vision_tower.encoder.layers.2.") for name in shapes)
    assert not any(name.startswith("visual_model.mask_decoder.transformer.layers.2.") for name in shapes)
    assert len(tokenizer) == 32004 and prompts.use_im_start_end
    assert all(tensor.dtype == torch.float32 for tensor in model.state_dict().values() if tensor.is_floating_point())

    released_file = FIXTURES / "gsva_released_keys_tiny.json"
    released = {_ours(entry["key"]): tuple(entry["shape"]) for entry in json.loads(released_file.read_text())["keys"]}
    assert {name: shapes.get(name) for name in released} == released
    extra = {name for name, _ in model.named_parameters()} - set(released)
    assert not extra, f"parameters the released model does not have: {sorted(extra)[:10]}"


def test_bench_model_hyperparameters(bench_model):
    _, model, _ = bench_model
    llm, clip = model.mllm.language_model.config, model.mllm.vision_tower.config
    encoder = model.visual_model.image_encoder
    transformer = model.visual_model.mask_decoder.transformer
    reference = json.loads((FIXTURES / "tiny_dims.json").read_text())
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                "intermediate_size", "max_position_embeddings", "rms_norm_eps", "tie_word_embeddings"):
        assert getattr(llm, key) == reference["llm_llama"][key], key
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                "patch_size", "image_size", "hidden_act"):
        assert getattr(clip, key) == reference["clip_vision"][key], key
    assert (llm.num_attention_heads, llm.max_position_embeddings) == (4, 2048)
    assert (clip.num_attention_heads, clip.hidden_act, clip.image_size) == (4, "quick_gelu", 224)
    assert model.mllm.use_im_start_end and model.mllm.select_layer == -2 and model.mllm.projector_type == "linear"
    assert [block.window_size for block in encoder.blocks] == [14, 0]  # global attention in block 1
    assert [block.attn.num_heads for block in encoder.blocks] == [4, 4]
    assert encoder.img_size == 1024 and model.visual_model.prompt_encoder.embed_dim == 256
    assert transformer.depth == 2 and transformer.layers[0].self_attn.num_heads == 8


def test_tiny_dims_defaults_unchanged():
    llava = build_tiny_llava(TinyDims(), 100, 32, use_im_start_end=False)
    assert llava.language_model.config.max_position_embeddings == 1024 and not llava.use_im_start_end
    assert build_tiny_llava(TinyDims(), 100, 32, use_im_start_end=True).use_im_start_end
    assert [block.window_size for block in build_tiny_sam(TinyDims(), 64).image_encoder.blocks] == [0, 0]
    windowed = build_tiny_sam(TinyDims(sam_window_size=4, sam_depth=3), 64).image_encoder.blocks
    assert [block.window_size for block in windowed] == [4, 4, 0]
    explicit = build_tiny_sam(TinyDims(sam_window_size=4, sam_depth=3, sam_global_attn_indexes=[0]), 64)
    assert [block.window_size for block in explicit.image_encoder.blocks] == [0, 4, 4]
