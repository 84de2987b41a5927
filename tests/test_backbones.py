"""Which multimodal LLM a checkpoint directory holds: read from its config.json (as transformers
writes it), matched against ``model.backbone``, and refused with the directory named when no
adapter reads it correctly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import (
    CLIPVisionConfig,
    InternVLConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaNextConfig,
    LlavaOnevisionConfig,
    Qwen2_5_VLConfig,
    Qwen2Config,
)

from gsva.config import ConfigError, load_config
from gsva.model.backbones import checkpoint_kind, resolve_backbone
from gsva.model.build import check_backbone_settings
from gsva.model.backbones.llava_hf import load_llava_hf

TINY_TEXT = dict(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
TINY_CLIP = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=28, patch_size=14)


def saved(directory: Path, config) -> Path:
    """``config`` written by transformers into ``directory`` (config.json only)."""
    config.save_pretrained(str(directory))
    return directory


@pytest.fixture
def checkpoints(tmp_path) -> dict[str, Path]:
    """One config.json of each kind, in the layout transformers (or the original LLaVA) writes."""
    original = tmp_path / "llava"
    original.mkdir()
    (original / "config.json").write_text(json.dumps({"model_type": "llava", "mm_vision_tower": "clip", "mm_hidden_size": 16}))
    return {
        "llava": original,
        "llava_hf": saved(tmp_path / "llava_hf", LlavaConfig(text_config=LlamaConfig(**TINY_TEXT), vision_config=CLIPVisionConfig(**TINY_CLIP))),
        "qwen2_5_vl": saved(tmp_path / "qwen", Qwen2_5_VLConfig(text_config=TINY_TEXT)),
        "internvl": saved(tmp_path / "internvl", InternVLConfig(text_config=Qwen2Config(**TINY_TEXT))),
        "llava_next": saved(tmp_path / "next", LlavaNextConfig(text_config=LlamaConfig(**TINY_TEXT), vision_config=CLIPVisionConfig(**TINY_CLIP))),
        "llava_onevision": saved(tmp_path / "onevision", LlavaOnevisionConfig(text_config=Qwen2Config(**TINY_TEXT))),
        "qwen2": saved(tmp_path / "qwen2", Qwen2Config(**TINY_TEXT)),
    }


@pytest.mark.parametrize("kind", ["llava", "llava_hf", "qwen2_5_vl", "internvl", "llava_next"])
def test_the_kind_is_read_from_the_checkpoint_and_a_named_kind_must_match(checkpoints, kind):
    assert checkpoint_kind(checkpoints[kind]) == kind
    assert resolve_backbone("auto", checkpoints[kind]) == kind
    assert resolve_backbone(kind, checkpoints[kind]) == kind
    other = "internvl" if kind != "internvl" else "qwen2_5_vl"
    with pytest.raises(ValueError, match=f"model.backbone='{other}'.*{checkpoints[kind]}"):
        resolve_backbone(other, checkpoints[kind])


def test_llava_next_is_its_own_kind_never_loaded_as_plain_llava(checkpoints):
    directory = checkpoints["llava_next"]
    assert checkpoint_kind(directory) == "llava_next"
    with pytest.raises(ValueError, match=f"model.backbone='llava_hf'.*{directory}.*'llava_next'"):
        resolve_backbone("llava_hf", directory)
    with pytest.raises(ValueError, match=f"{directory}.*'llava_next'"):
        load_llava_hf(directory, torch.float32)


def test_llava_onevision_is_refused_rather_than_loaded_as_plain_llava(checkpoints):
    directory = checkpoints["llava_onevision"]
    with pytest.raises(ValueError, match=f"{directory}.*'llava_onevision'"):
        checkpoint_kind(directory)
    with pytest.raises(ValueError, match=f"{directory}.*'llava_onevision'"):
        resolve_backbone("llava_next", directory)


def test_a_text_only_or_missing_checkpoint_is_refused_by_name(checkpoints, tmp_path):
    with pytest.raises(ValueError, match=f"{checkpoints['qwen2']}.*'qwen2'"):
        checkpoint_kind(checkpoints["qwen2"])
    with pytest.raises(FileNotFoundError, match="config.json"):
        checkpoint_kind(tmp_path / "nowhere")


def test_settings_of_another_backbone_are_refused_by_key(checkpoints):
    def config(*overrides: str):
        return load_config(None, ["model.sam_type=tiny", f"model.llava_path={checkpoints['qwen2_5_vl']}", *overrides])

    with pytest.raises(ConfigError, match="data.conversation"):
        check_backbone_settings(config(), "qwen2_5_vl")
    with pytest.raises(ConfigError, match="model.mm_projector_init"):
        check_backbone_settings(config("data.conversation=chat_template", "model.mm_projector_init=random"), "qwen2_5_vl")
    check_backbone_settings(config("data.conversation=chat_template"), "qwen2_5_vl")
    with pytest.raises(ConfigError, match="model.llava_path"):
        check_backbone_settings(load_config(None, ["model.sam_type=tiny", "model.backbone=internvl"]), "internvl")
