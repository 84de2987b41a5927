"""The FLOP formula of the training benchmark against torch's FLOP counter, at the authors' tiny shape."""

import pytest
import torch

from gsva.pipeline import build_pipeline
from gsva.bench.flops import clip_flops, flop_counter, llm_flops, sam_encoder_flops
from gsva.bench.shapes import reference_config


@pytest.fixture(scope="module")
def reference_model(tokenizer_dir):
    """The tiny reference dims (SAM ViT 128x2 with windowed and global blocks at 1024 px), a small vocabulary."""
    model = build_pipeline(reference_config("tiny", tokenizer_dir)).model
    model.mllm.language_model.set_attn_implementation("eager")
    model.mllm.vision_tower.set_attn_implementation("eager")
    return model


def counted(function) -> int:
    counter = flop_counter()
    with counter:
        function()
    return counter.get_total_flops()


def test_sam_encoder_formula_matches_the_counter(reference_model):
    images = torch.randn(2, 3, 1024, 1024)
    with torch.no_grad():
        measured = counted(lambda: reference_model.visual_model.image_encoder(images))
    assert measured == sam_encoder_flops(reference_model, 2)


def test_clip_formula_matches_the_counter(reference_model):
    images = torch.randint(0, 256, (3, 3, 224, 224), dtype=torch.uint8)
    with torch.no_grad():
        measured = counted(lambda: reference_model.mllm.encode_images(images))
    assert measured == clip_flops(reference_model, 3)


def test_llm_forward_backward_formula_matches_the_counter(reference_model):
    """Frozen weights get activation gradients only; LoRA and lm_head weight gradients too."""
    llava = reference_model.mllm
    lengths, answers = [37, 52], 9
    width = llava.hidden_size
    embeds = torch.randn(2, max(lengths), width, requires_grad=True)
    rows = torch.tensor([0] * 4 + [1] * 5)
    cols = torch.tensor([30, 31, 32, 33, 40, 44, 45, 50, 51])

    def step() -> None:
        hidden = llava.last_hidden_states(embeds, torch.arange(max(lengths)).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1))
        llava.lm_logits(hidden[rows, cols]).float().logsumexp(-1).sum().backward()

    measured = counted(step)
    # The eager kernel scores every padded position of the longest row.
    assert measured == llm_flops(reference_model, [max(lengths)] * 2, answers, full_attention=True)
    assert llm_flops(reference_model, lengths, answers) < measured
