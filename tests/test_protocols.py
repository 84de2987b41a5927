"""Teacher-forced and generate protocols agree on a model whose answer is forced (memorised)."""

import torch

from gsva.model.gsva import align_slots
from tests.test_model import make_batch


def test_generate_matches_teacher_forced_on_a_memorised_answer(config, fresh_pipeline):
    tokenizer, model, prompts = fresh_pipeline.tokenizer, fresh_pipeline.model, fresh_pipeline.builder.prompts
    batch, _ = make_batch(config, tokenizer, prompts, split="val", items=(0,), train=False)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    for _ in range(150):
        losses = model(batch)
        optimizer.zero_grad()
        losses.total.backward()
        optimizer.step()
        if float(losses.ce) < 1e-3:
            break
    model.eval()
    forced = model.predict_teacher_forced(batch)[0]
    generated = model.generate(batch, max_new_tokens=64, tokenizer=tokenizer)[0]
    truth = [not exists for exists in batch.slot_exists[0].tolist()]
    answer_ids = batch.input_ids[0][batch.labels[0] != -100].tolist()
    assert generated.text.replace(" ", "") == tokenizer.decode(answer_ids[:-1]).replace(" ", "")
    assert generated.parse_failures == 0
    assert forced.rejected == truth
    assert generated.rejected == truth
    # Up to the first [REJ] both protocols read the mask query from identical contexts.
    first_rej = truth.index(True) if True in truth else len(truth)
    assert first_rej > 0
    for slot in range(first_rej):
        assert torch.equal(forced.masks[slot], generated.masks[slot])


def test_generate_batches_like_single_samples(tiny_pipeline):
    """Left-padded batched generation gives the same answers and masks as one image at a time."""
    config = tiny_pipeline.cfg
    tokenizer, model, prompts = tiny_pipeline.tokenizer, tiny_pipeline.model, tiny_pipeline.builder.prompts
    batch, _ = make_batch(config, tokenizer, prompts, split="val", items=(0, 1, 2), train=False)
    together = model.generate(batch, max_new_tokens=12, tokenizer=tokenizer)
    for item, prediction in zip((0, 1, 2), together):
        alone_batch, _ = make_batch(config, tokenizer, prompts, split="val", items=(item,), train=False)
        alone = model.generate(alone_batch, max_new_tokens=12, tokenizer=tokenizer)[0]
        assert alone.text == prediction.text
        assert alone.rejected == prediction.rejected
        assert all(torch.equal(a, b) for a, b in zip(alone.masks, prediction.masks))


def test_align_slots_matches_generated_slots_in_order():
    """Pure parsing of a generated answer's slot tokens, without a model."""
    exact = align_slots([True, False, True], 3)
    assert (exact.rejected, exact.mask_index, exact.parse_failures) == ([False, True, False], [0, None, 1], 0)
    short = align_slots([False], 3)  # two slots never generated: rejected, and two failures
    assert (short.rejected, short.mask_index, short.parse_failures) == ([True, True, True], [None, None, None], 2)
    extra = align_slots([True, True, False, True], 2)  # the extra slots are dropped
    assert (extra.rejected, extra.mask_index, extra.parse_failures) == ([False, False], [0, 1], 2)
    assert align_slots([], 0).parse_failures == 0
