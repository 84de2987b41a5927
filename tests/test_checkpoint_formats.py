"""Component checkpoints in their real layouts load strictly; bad ones fail with a clear message."""

import logging
import re

import pytest
import torch
from safetensors.torch import load_file, save_file

from gsva.config import TinyDims
from gsva.model.mllm import build_tiny_llava, load_llava, save_llava_checkpoint
from gsva.model.sam import build_sam, build_tiny_sam


def test_sam_checkpoint_round_trip_and_mismatch(tmp_path):
    torch.manual_seed(0)
    sam = build_tiny_sam(TinyDims(), 64)
    torch.save(sam.state_dict(), tmp_path / "sam.pth")
    loaded = build_sam("tiny", tmp_path / "sam.pth", TinyDims(), 64)
    for (name, a), (_, b) in zip(sam.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    state = sam.state_dict()
    del state["mask_decoder.iou_token.weight"]
    torch.save(state, tmp_path / "broken.pth")
    with pytest.raises(ValueError, match=r"mask_decoder\.iou_token\.weight"):
        build_sam("tiny", tmp_path / "broken.pth", TinyDims(), 64)
    with pytest.raises(FileNotFoundError, match=r"absent\.pth"):
        build_sam("tiny", tmp_path / "absent.pth", TinyDims(), 64)


@pytest.mark.parametrize("use_im_start_end", [False, True])
def test_llava_original_layout_round_trip(tmp_path, base_tokenizer, use_im_start_end):
    torch.manual_seed(0)
    llava = build_tiny_llava(TinyDims(), len(base_tokenizer), 32, use_im_start_end=use_im_start_end)
    save_llava_checkpoint(llava, tmp_path / "llava", tmp_path / "clip")
    loaded = load_llava(tmp_path / "llava", None, torch.float32)
    assert loaded.use_im_start_end == use_im_start_end
    images = torch.randn(2, 3, 32, 32)
    assert torch.allclose(llava.encode_images(images), loaded.encode_images(images))
    ids = torch.randint(3, len(base_tokenizer), (2, 7))
    mask = torch.ones_like(ids, dtype=torch.bool)
    assert torch.allclose(
        llava.last_hidden_states(llava.embed_tokens(ids), mask), loaded.last_hidden_states(loaded.embed_tokens(ids), mask)
    )


def test_llava_without_vision_tower_explains_what_to_do(tmp_path, base_tokenizer):
    llava = build_tiny_llava(TinyDims(), len(base_tokenizer), 32, use_im_start_end=False)
    save_llava_checkpoint(llava, tmp_path / "llava", tmp_path / "clip")
    with pytest.raises(FileNotFoundError, match=r"model\.vision_tower_path"):
        load_llava(tmp_path / "llava", tmp_path / "nowhere", torch.float32)


def test_llava_loads_quietly_and_reports_unread_weights_itself(tmp_path, base_tokenizer, caplog, capsys):
    """No transformers load report for the projector weights it reads itself; a weight nobody reads
    is named once, in a warning of its own; a missing decoder weight is an error naming the folder."""
    llava = build_tiny_llava(TinyDims(), len(base_tokenizer), 32, use_im_start_end=False)
    save_llava_checkpoint(llava, tmp_path / "llava", tmp_path / "clip")
    with caplog.at_level(logging.INFO):
        load_llava(tmp_path / "llava", None, torch.float32)
    output = caplog.text + "".join(capsys.readouterr())
    assert "LOAD REPORT" not in output and "UNEXPECTED" not in output and "not read" not in output
    weights = tmp_path / "llava" / "model.safetensors"
    state = load_file(str(weights))
    save_file({**state, "model.stray.weight": torch.zeros(2)}, str(weights), metadata={"format": "pt"})
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        load_llava(tmp_path / "llava", None, torch.float32)
    assert "1 checkpoint weights have no place in LlamaForCausalLM and are not read: ['model.stray.weight']" in caplog.text
    del state["model.norm.weight"]
    save_file(state, str(weights), metadata={"format": "pt"})
    with pytest.raises(ValueError, match=rf"{re.escape(str(tmp_path / 'llava'))}.*model\.norm\.weight"):
        load_llava(tmp_path / "llava", None, torch.float32)
