"""The full GSVA model at tiny sizes: losses, gradients, slot bookkeeping, inference protocols."""

import math
import random

import numpy as np
import pytest
import torch

from gsva.data.refer_seg.reader import ReferIndex
from gsva.data.refer_seg.dataset import ReferSegDataset
from gsva.data.sample_builder import SampleBuilder, SampleSettings, SlotTarget
from gsva.data.samples import Collator
from gsva.pipeline import build_pipeline
from gsva.model.losses import rejected_row_losses
from gsva.model.trainable import is_trainable
from tests.conftest import seeded_pipeline, tiny_config


def make_batch(cfg, tokenizer, prompts, split="train", items=(0, 1), train=True):
    settings = SampleSettings(sam_image_size=cfg.data.sam_image_size, clip_image_size=cfg.data.clip_image_size)
    dataset = ReferSegDataset(ReferIndex(cfg.data.dataset_dir), split, SampleBuilder(tokenizer, prompts, settings), train)
    samples = [dataset.sample(i, random.Random(i)) if train else dataset[i] for i in items]
    return Collator(tokenizer.pad_token_id, cfg.data.sam_image_size)(samples), dataset


@pytest.mark.parametrize("finetune", ["lora", "frozen", "full"])
def test_gradients_only_on_trainable_set(synthetic_root, tokenizer_dir, finetune):
    cfg = tiny_config(synthetic_root, tokenizer_dir, f"model.finetune={finetune}", "model.lora_r=4")
    pipeline = seeded_pipeline(cfg)
    tokenizer, model, prompts = pipeline.tokenizer, pipeline.model, pipeline.builder.prompts
    batch, _ = make_batch(cfg, tokenizer, prompts)
    losses = model(batch)
    for value in (losses.total, losses.ce, losses.bce, losses.dice):
        assert torch.isfinite(value)
    losses.total.backward()
    with_grad = {name for name, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert with_grad <= trainable
    assert all(is_trainable(name, cfg.model) for name in trainable)
    assert any("mask_decoder" in name for name in with_grad)
    assert any("query_projector" in name for name in with_grad)
    assert not any("image_encoder" in name or "vision_tower" in name or "mm_projector" in name for name in trainable)
    llm_trained = {name for name in trainable if name.startswith("mllm.language_model.")}
    if finetune == "lora":
        assert any("lora_B" in name for name in with_grad)  # lora_A gets zero gradient while lora_B is 0
        assert llm_trained == {n for n in llm_trained if "lora_" in n or "embed_tokens" in n or "lm_head" in n}
        assert any("embed_tokens" in name for name in with_grad) and any("lm_head" in name for name in with_grad)
    elif finetune == "frozen":
        assert not llm_trained
    else:
        assert any("mlp.down_proj" in name for name in with_grad)


def test_slot_bookkeeping_with_several_conversations_per_image(config, fresh_pipeline):
    tokenizer, model, prompts = fresh_pipeline.tokenizer, fresh_pipeline.model, fresh_pipeline.builder.prompts
    first, dataset = make_batch(config, tokenizer, prompts, items=(0,))
    second, _ = make_batch(config, tokenizer, prompts, items=(3,))
    # Image 0 carries two conversations (the second borrowed from item 3 with its own targets);
    # the model must encode the image once and route each [SEG] to its conversation's masks.
    sample = dataset[0]
    other = dataset[3].conversations[0]
    other.target_masks = other.target_masks[:, : sample.original_size[0], : sample.original_size[1]]
    sample.conversations.append(other)
    batch = Collator(tokenizer.pad_token_id, config.data.sam_image_size)([sample])
    assert batch.num_images == 1 and batch.input_ids.shape[0] == 2
    assert batch.conv_to_image.tolist() == [0, 0]
    seg_id, rej_id = model.token_ids.seg_ids[0], model.token_ids.rej_id
    for row, exists in enumerate(batch.slot_exists):
        ids = batch.input_ids[row]
        assert int((ids == seg_id).sum()) == int(exists.sum())
        assert int((ids == rej_id).sum()) == int((~exists).sum())
    calls = []
    model.visual_model.image_encoder.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    losses = model(batch)
    assert calls == [1]
    assert torch.isfinite(losses.total)
    # Each query is the state just before its [SEG]; queries follow conversation then slot order,
    # and each carries its own conversation's target mask.
    assert all(int(batch.input_ids[row, col + 1]) == seg_id for row, col in zip(batch.seg_rows, batch.seg_cols))
    assert batch.seg_rows.tolist() == [row for row, exists in enumerate(batch.slot_exists) for _ in range(int(exists.sum()))]
    expected = torch.cat([masks[exists] for masks, exists in zip(batch.target_masks, batch.slot_exists)])
    assert torch.equal(batch.seg_masks[0], expected)
    assert batch.rejected_per_image == [sum(int((~exists).sum()) for exists in batch.slot_exists)]
    # An expression holding a slot token literally would shift every later slot: refused.
    builder = dataset.builder
    mask = np.zeros(sample.original_size, dtype=bool)
    mask[:4, :4] = True
    image = np.zeros((*sample.original_size, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="slot tokens"):
        builder.segmentation(image, [SlotTarget("the [SEG] cat", mask, True), SlotTarget("dog", mask, True)], random.Random(0), {})


def test_authors_mask_loss_counts_rejected_rows(config, fresh_pipeline, synthetic_root, tokenizer_dir):
    tokenizer, model, prompts = fresh_pipeline.tokenizer, fresh_pipeline.model, fresh_pipeline.builder.prompts
    batch, _ = make_batch(config, tokenizer, prompts, items=(0, 1, 2, 3))
    torch.manual_seed(1)
    authors = model(batch)
    model.cfg = tiny_config(synthetic_root, tokenizer_dir, "model.mask_loss_normalization=seg_only").model
    seg_only = model(batch)
    num_seg = sum(int(e.sum()) for e in batch.slot_exists)
    num_slots = sum(e.numel() for e in batch.slot_exists)
    num_rej = num_slots - num_seg
    assert num_rej > 0
    height, width = batch.original_sizes[0]
    bce_row, dice_row = rejected_row_losses(height, width)
    assert math.isclose(float(authors.bce), (float(seg_only.bce) * num_seg + num_rej * bce_row) / num_slots, rel_tol=1e-5)
    assert math.isclose(float(authors.dice), (float(seg_only.dice) * num_seg + num_rej * dice_row) / num_slots, rel_tol=1e-5)


class ForcedHead(torch.nn.Module):
    """An lm_head whose argmax is always ``token``."""

    def __init__(self, vocab: int, token: int) -> None:
        super().__init__()
        self.vocab, self.token = vocab, token

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = hidden.new_zeros(*hidden.shape[:-1], self.vocab)
        logits[..., self.token] = 10.0
        return logits


def test_teacher_forced_decision_rule(config, fresh_pipeline):
    """argmax == ground truth -> that token; anything else -> the opposite decision."""
    tokenizer, model, prompts = fresh_pipeline.tokenizer, fresh_pipeline.model, fresh_pipeline.builder.prompts
    model.eval()
    batch, _ = make_batch(config, tokenizer, prompts, split="val", items=(0, 1), train=False)
    seg_id, rej_id = model.token_ids.seg_ids[0], model.token_ids.rej_id
    vocab = model.mllm.language_model.get_output_embeddings().out_features
    truth = [e.tolist() for e in batch.slot_exists]
    for forced in (seg_id, rej_id, 5):
        model.mllm.language_model.set_output_embeddings(ForcedHead(vocab, forced))
        predictions = model.predict_teacher_forced(batch)
        got = [p.rejected for p in predictions]
        if forced == seg_id:
            assert got == [[False] * len(t) for t in truth]
        elif forced == rej_id:
            assert got == [[True] * len(t) for t in truth]
        else:  # a token that is neither: every slot gets the opposite of its ground truth
            assert got == [[exists for exists in t] for t in truth]
        assert [p.masks.shape[0] for p in predictions] == [len(t) for t in truth]


def test_gradient_checkpointing_and_llama2_template(synthetic_root, tokenizer_dir):
    cfg = tiny_config(
        synthetic_root, tokenizer_dir, "model.finetune=lora", "model.lora_r=4", "model.gradient_checkpointing=true", "data.conversation=llava_llama_2"
    )
    pipeline = build_pipeline(cfg)
    tokenizer, model, prompts = pipeline.tokenizer, pipeline.model, pipeline.builder.prompts
    assert prompts.template.name == "llava_llama_2"
    batch, _ = make_batch(cfg, tokenizer, prompts)
    assert "[/INST]" in tokenizer.decode([t for t in batch.input_ids[0].tolist() if t >= 0])
    losses = model(batch)
    losses.total.backward()
    assert torch.isfinite(losses.total)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in model.named_parameters() if "lora_B" in n)


def test_sam_relative_positions_match_segment_anything():
    """Our device-side relative-position lookup equals the library's (loaded afresh: the import
    of gsva.model.sam installs ours in its place)."""
    import importlib.util

    from gsva.model.sam import relative_position_table

    spec = importlib.util.find_spec("segment_anything.modeling.image_encoder")
    library = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(library)
    torch.manual_seed(0)
    for q_size, k_size, rows in ((14, 14, 27), (64, 64, 127), (64, 64, 27), (8, 16, 31)):
        table = torch.randn(rows, 12)
        assert torch.equal(relative_position_table(q_size, k_size, table), library.get_rel_pos(q_size, k_size, table))


@pytest.mark.parametrize("size, heads, use_rel_pos", [(14, 4, True), (32, 4, True), (16, 2, False)])
def test_fused_sam_attention_equals_segment_anything(size, heads, use_rel_pos):
    """The attention installed by gsva.model.sam (relative positions folded into one fused call)
    gives the library's outputs and input gradients, windowed and global sizes alike."""
    import importlib.util

    from gsva.model.sam import attention_with_relative_positions

    spec = importlib.util.find_spec("segment_anything.modeling.image_encoder")
    library = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(library)  # afresh: the library's own forward and relative-position lookup
    torch.manual_seed(0)
    attention = library.Attention(32, num_heads=heads, qkv_bias=True, use_rel_pos=use_rel_pos, input_size=(size, size))
    if use_rel_pos:
        torch.nn.init.normal_(attention.rel_pos_h, std=0.5)
        torch.nn.init.normal_(attention.rel_pos_w, std=0.5)
    inputs = torch.randn(3, size, size, 32, requires_grad=True)
    expected = attention(inputs)
    (expected_grad,) = torch.autograd.grad(expected.square().sum(), inputs)
    got = attention_with_relative_positions(attention, inputs)
    (got_grad,) = torch.autograd.grad(got.square().sum(), inputs)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(got_grad, expected_grad, rtol=1e-4, atol=1e-4)


def test_bf16_model_trains_a_step(synthetic_root, tokenizer_dir):
    """bf16 end to end (SAM's dense positional encoding included, which segment_anything computes
    from float32 coordinates and cannot multiply by a bf16 buffer)."""
    from gsva.model.mask_decoding import dense_positional_encoding

    cfg = tiny_config(synthetic_root, tokenizer_dir, "model.precision=bf16")
    pipeline = seeded_pipeline(cfg)
    tokenizer, model, prompts = pipeline.tokenizer, pipeline.model, pipeline.builder.prompts
    batch, _ = make_batch(cfg, tokenizer, prompts)
    losses = model(batch)
    losses.total.backward()
    assert torch.isfinite(losses.total)
    assert model.visual_model.mask_decoder.output_upscaling[0].weight.grad is not None
    fp32_encoder = model.visual_model.prompt_encoder.float()
    assert torch.equal(dense_positional_encoding(fp32_encoder), fp32_encoder.get_dense_pe())


def test_right_padded_rows_need_no_padding_mask(fresh_pipeline):
    """The training forward runs the decoder with the causal mask only: on right-padded rows the
    states of the real tokens equal those computed with the padding mask."""
    llava = fresh_pipeline.model.mllm
    lengths = torch.tensor([23, 9, 17])
    embeds = torch.randn(3, 23, llava.hidden_size)
    mask = torch.arange(23).unsqueeze(0) < lengths.unsqueeze(1)
    with torch.no_grad():
        masked = llava.last_hidden_states(embeds, mask)
        causal = llava.last_hidden_states(embeds, None)
    assert torch.allclose(causal[mask], masked[mask], atol=1e-5)
    assert not torch.allclose(causal[~mask], masked[~mask], atol=1e-3)  # padding states differ, and are never read


def test_vision_tower_guard_catches_doubled_hidden_states(config, fresh_pipeline):
    """A CLIP tower whose output hooks were installed twice (nested in another transformers model
    that ran first) returns every layer twice: -2 would silently become the last layer. The tower
    is first used normally, then nested and hooked again: the next call must fail loudly."""
    from transformers import LlamaConfig, LlamaModel

    from gsva.model.mllm import VisionTowerOutputError

    llava = fresh_pipeline.model.mllm
    images = torch.randint(0, 256, (1, 3, config.data.clip_image_size, config.data.clip_image_size), dtype=torch.uint8)
    features = llava.vision_features(images)
    assert features.shape[0] == 1

    outer = LlamaModel(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, vocab_size=10))
    outer.vision_tower = llava.vision_tower  # nested: the outer model's first call hooks CLIP's layers again
    outer(input_ids=torch.tensor([[1, 2]]), output_hidden_states=True)
    with pytest.raises(VisionTowerOutputError, match="hidden states"):
        llava.vision_features(images)
