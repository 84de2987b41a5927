"""Batched mask decoding against segment_anything's own modules: the two-way transformer with
token-side projections, and ``decode_masks`` (in chunks of any size) against
``MaskDecoder.forward`` one query at a time."""

import pytest
import torch
from segment_anything.modeling import MaskDecoder, PromptEncoder, TwoWayTransformer

from gsva.model import mask_decoding
from gsva.model.mask_decoding import decode_masks, queries_per_chunk
from gsva.model.two_way_transformer import two_way_transformer


def perturbed(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """``module`` with every parameter moved off its initial value (biases included: SAM starts
    them at 0, which would hide a bias handled wrongly)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    return module


@pytest.mark.parametrize("heads, tokens", [(8, 6), (4, 3)])
def test_token_side_transformer_equals_segment_anything(heads, tokens):
    torch.manual_seed(0)
    transformer = perturbed(TwoWayTransformer(depth=2, embedding_dim=64, num_heads=heads, mlp_dim=128), 1)
    image = torch.randn(3, 64, 12, 10, requires_grad=True)
    image_pe = torch.randn(1, 64, 12, 10)
    points = torch.randn(3, tokens, 64, requires_grad=True)
    inputs = [image, points, *transformer.parameters()]

    def outputs_and_gradients(function):
        queries, keys = function()
        loss = (queries * queries.detach().sin()).sum() + (keys * keys.detach().cos()).sum()
        return queries, keys, torch.autograd.grad(loss, inputs)

    reference = outputs_and_gradients(lambda: transformer(image, image_pe.expand(3, -1, -1, -1), points))
    ours = outputs_and_gradients(lambda: two_way_transformer(transformer, image, image_pe, points))
    torch.testing.assert_close(ours[0], reference[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(ours[1], reference[1], rtol=0, atol=1e-5)
    for name, mine, theirs in zip(["image", "points", *(n for n, _ in transformer.named_parameters())], ours[2], reference[2]):
        torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-5, msg=lambda message: f"gradient of {name}: {message}")


@pytest.mark.parametrize("queries_in_a_chunk", [1, 2, 5])
def test_decode_masks_equals_mask_decoder_per_query(monkeypatch, queries_in_a_chunk):
    """The same masks whether the 5 queries are decoded one, two or five at a time."""
    per_query = 16 * 8 * 8 * (32 // 8) * 4  # upscaled features of one query, fp32
    monkeypatch.setitem(mask_decoding.CHUNK_BYTES, "cpu", queries_in_a_chunk * per_query + per_query // 2)
    assert queries_per_chunk(torch.zeros(2, 32, 8, 8)) == queries_in_a_chunk
    torch.manual_seed(0)
    prompt_encoder = PromptEncoder(embed_dim=32, image_embedding_size=(8, 8), input_image_size=(32, 32), mask_in_chans=4)
    decoder = perturbed(MaskDecoder(
        transformer_dim=32, transformer=TwoWayTransformer(depth=2, embedding_dim=32, num_heads=4, mlp_dim=64)
    ), 2)
    embeddings = torch.randn(2, 32, 8, 8)
    queries = torch.randn(5, 32)
    query_to_image = torch.tensor([0, 1, 1, 0, 1])
    ours = decode_masks(decoder, prompt_encoder, embeddings, queries, query_to_image)
    dense = prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(1, -1, 8, 8)
    for index in range(5):
        reference, _ = decoder(
            image_embeddings=embeddings[query_to_image[index]].unsqueeze(0), image_pe=prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=queries[index].view(1, 1, -1), dense_prompt_embeddings=dense, multimask_output=False,
        )
        torch.testing.assert_close(ours[index], reference[0, 0], rtol=0, atol=1e-5)


def test_chunks_hold_the_devices_bytes_of_upscaled_features():
    """32 MiB on a CPU: 4 queries at SAM's 256 x 64 x 64 embedding in fp32, 8 in bf16, and the
    tiny demo's whole batch; never fewer than one query."""
    assert queries_per_chunk(torch.zeros(1, 256, 64, 64)) == 4
    assert queries_per_chunk(torch.zeros(1, 256, 64, 64, dtype=torch.bfloat16)) == 8
    assert queries_per_chunk(torch.zeros(8, 64, 8, 8)) == 1024
    assert queries_per_chunk(torch.zeros(1, 256, 512, 512)) == 1
