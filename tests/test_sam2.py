"""SAM2 as GSVA's mask decoder (``model.mask_decoder: sam2``): preprocessing against
``Sam2ImageProcessor``, batched decoding against transformers' ``Sam2Model`` one image at a time,
the whole model's losses, gradients and predictions, its saved weights, and checkpoint errors."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from transformers import Sam2ImageProcessor, Sam2Model

from gsva.batch import GsvaBatch
from gsva.config import ConfigError, TinyDims
from gsva.data.sample_builder import SlotTarget
from gsva.data.refer_seg.dataset import ReferSegDataset
from gsva.data.refer_seg.reader import ReferIndex
from gsva.data.samples import Collator, pad_sam_images
from gsva.data.transforms import sam_resize
from gsva.engine.export import write_merged
from gsva.model import mask_decoding
from gsva.model.encoder_features import encoder_layout
from gsva.model.directory import load_trainable_weights, save_pretrained
from gsva.model.gsva import PROTOCOLS
from gsva.model.mask_head import mask_head_of
from gsva.model.pixels import normalize_sam2_images
from gsva.model.sam2 import Sam2Head, build_sam2, build_tiny_sam2
from gsva.pipeline import Pipeline, build_pipeline
from tests.conftest import fit_one_batch, seeded_pipeline, tiny_config

SIZE = 64
SAM2 = "model.mask_decoder=sam2"


@pytest.fixture(scope="module")
def tiny_sam2() -> Sam2Model:
    torch.manual_seed(0)
    return build_tiny_sam2(TinyDims(), SIZE).eval()


@pytest.fixture(scope="module")
def tiny_sam2_stride2() -> Sam2Model:
    """The demo's tiny SAM2 (``model.tiny.sam2_patch_stride: 2``): an image embedding of S/8."""
    torch.manual_seed(0)
    return build_tiny_sam2(TinyDims(sam2_patch_stride=2), SIZE).eval()


def _padded_batch(images: list[np.ndarray]) -> tuple[torch.Tensor, list[tuple[int, int]], list[torch.Tensor]]:
    """The data path's SAM input of ``images``: (B, 3, S, S) uint8, resized sizes, resized images."""
    resized = [sam_resize(image, SIZE) for image in images]
    return pad_sam_images(resized, SIZE), [tuple(image.shape[1:]) for image in resized], resized


def test_preprocessing_equals_the_image_processor():
    """On the image the data path hands over (longest side resized to S), ours equals
    ``Sam2ImageProcessor``'s pixel values exactly; an image whose longest side already is S
    reaches both unchanged, so there ours equals the processor on the original image."""
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, shape, dtype=np.uint8) for shape in ((50, 80, 3), (90, 40, 3), (64, 30, 3), (64, 64, 3))]
    padded, sizes, resized = _padded_batch(images)
    ours = normalize_sam2_images(padded, sizes)
    processor = Sam2ImageProcessor(size={"height": SIZE, "width": SIZE})
    expected = processor(images=resized, return_tensors="pt").pixel_values
    assert ours.shape == (4, 3, SIZE, SIZE) and ours.dtype == torch.float32
    assert torch.equal(ours, expected)
    originals = [torch.from_numpy(image).permute(2, 0, 1) for image in images[2:]]
    assert torch.equal(ours[2:], processor(images=originals, return_tensors="pt").pixel_values)


@pytest.mark.parametrize(("chunk_bytes", "patch_stride"), [(None, 4), (1, 4), (None, 2)])
def test_batched_decode_equals_sam2_model_per_image(monkeypatch, request, chunk_bytes, patch_stride):
    """All queries of a batch decoded together (in one chunk, or one query per chunk) equal
    ``Sam2Model``'s mask decoder run image by image on its own image embeddings with the queries
    as sparse prompts, the no-mask dense prompt and ``multimask_output=False``; masks are 4x the
    image embedding, S/patch_stride per side."""
    tiny_sam2 = request.getfixturevalue("tiny_sam2" if patch_stride == 4 else "tiny_sam2_stride2")
    if chunk_bytes is not None:
        monkeypatch.setitem(mask_decoding.CHUNK_BYTES, "cpu", chunk_bytes)
    rng = np.random.default_rng(1)
    padded, sizes, _ = _padded_batch([rng.integers(0, 256, (48 + 8 * index, 64, 3), dtype=np.uint8) for index in range(4)])
    head = Sam2Head(tiny_sam2, SIZE)
    query_to_image = torch.tensor([2, 0, 0, 2, 1, 2, 0])  # image 3 has none
    queries = torch.randn(len(query_to_image), head.prompt_dim)
    with torch.no_grad():
        ours = head.decode(head.encode(padded, sizes), queries, query_to_image)
        pixels = normalize_sam2_images(padded, sizes)
        position = tiny_sam2.get_image_wide_positional_embeddings()
        _, dense = tiny_sam2.prompt_encoder(None, None, None, None)
        for image in range(3):  # Sam2MaskDecoder cannot take zero prompts: image 3 is left out
            embeddings = tiny_sam2.get_image_embeddings(pixels[image : image + 1])
            picked = (query_to_image == image).nonzero()[:, 0]
            masks, *_ = tiny_sam2.mask_decoder(
                image_embeddings=embeddings[-1],
                image_positional_embeddings=position,
                sparse_prompt_embeddings=queries[picked].reshape(1, -1, 1, head.prompt_dim),
                dense_prompt_embeddings=dense,
                multimask_output=False,
                high_resolution_features=embeddings[:-1],
            )
            assert masks.shape[-2:] == ours.shape[-2:] == (SIZE // patch_stride, SIZE // patch_stride)
            torch.testing.assert_close(ours[picked], masks[0, :, 0], rtol=0, atol=1e-5)


def test_tiny_sam2_needs_an_image_size_its_stages_divide():
    with pytest.raises(ValueError, match=r"sam2_patch_stride=2 needs data\.sam_image_size divisible by 16, got 72"):
        build_tiny_sam2(TinyDims(sam2_patch_stride=2), 72)


def test_postprocess_resizes_to_the_original_size(tiny_sam2):
    low_res = torch.randn(3, SIZE // 4, SIZE // 4)
    masks = Sam2Head(tiny_sam2, SIZE).postprocess(low_res, (40, 64), (75, 120))
    expected = Sam2ImageProcessor().post_process_masks([low_res.unsqueeze(0)], [(75, 120)], binarize=False)[0][0]
    assert torch.equal(masks, expected)


def _non_square_batch(pipeline: Pipeline) -> GsvaBatch:
    """Two images of other aspect ratios than the square, each asked a present and an absent target."""
    rng = np.random.default_rng(2)
    samples = []
    for height, width in ((40, 96), (80, 50)):
        mask = np.zeros((height, width), dtype=bool)
        mask[5:20, 10:30] = True
        targets = [SlotTarget("the red square", mask, True), SlotTarget("the blue circle", np.zeros_like(mask), False)]
        image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        samples.append(pipeline.builder.segmentation(image, targets, random.Random(0), {}))
    return Collator(pipeline.tokenizer.pad_token_id, SIZE)(samples)


def test_gsva_with_sam2_trains_and_predicts(synthetic_root, tokenizer_dir):
    cfg = tiny_config(synthetic_root, tokenizer_dir, SAM2)
    pipeline = seeded_pipeline(cfg)
    model = pipeline.model
    assert isinstance(model.visual_model, Sam2Model)
    batch = _non_square_batch(pipeline)
    losses = model(batch)
    assert all(torch.isfinite(value) for value in (losses.total, losses.ce, losses.bce, losses.dice))
    losses.total.backward()
    with_grad = {name for name, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    for name in ("mask_decoder.upscale_conv1.weight", "mask_decoder.conv_s0.weight", "mask_decoder.conv_s1.weight", "mask_decoder.mask_tokens.weight"):
        assert f"visual_model.{name}" in with_grad
    assert {name for name, _ in model.query_projector.named_parameters()} == {
        name.removeprefix("query_projector.") for name in with_grad if name.startswith("query_projector.")
    }
    frozen = ("visual_model.vision_encoder.", "visual_model.prompt_encoder.", "visual_model.no_memory_embedding")
    for name, parameter in model.named_parameters():
        if name.startswith(frozen):
            assert not parameter.requires_grad and parameter.grad is None, name

    model.eval()
    for protocol in PROTOCOLS:
        predictions = model.predict(batch, protocol, max_new_tokens=8)
        for prediction, size in zip(predictions, [(40, 96), (80, 50)]):
            assert prediction.masks.shape == (2, *size)


def test_gsva_with_sam2_learns_a_batch(synthetic_root, tokenizer_dir):
    """The trainable parts (the tiny LLM, query projector and SAM2's mask decoder) fitted to one
    batch of the synthetic shapes drive the total loss and the DICE loss down, through a random
    frozen tiny SAM2 encoder at the demo's patch stride (the whole-demo runs with a pretrained tiny
    SAM2 are in docs/backbones.md)."""
    pipeline = seeded_pipeline(tiny_config(synthetic_root, tokenizer_dir, SAM2, "model.tiny.sam2_patch_stride=2"))
    dataset = ReferSegDataset(ReferIndex(pipeline.cfg.data.dataset_dir), "train", pipeline.builder, True)
    samples = [dataset.sample(item, random.Random(item)) for item in range(4)]
    model, batch = pipeline.model, Collator(pipeline.tokenizer.pad_token_id, SIZE)(samples)
    history = fit_one_batch(model, batch, steps=100)
    totals, dice = [step["total"] for step in history], [step["dice"] for step in history]
    assert totals[-1] < 0.5 * totals[0], totals
    assert np.mean(dice[-10:]) < 0.85 * np.mean(dice[:10]), dice


def test_sam2_weights_round_trip(synthetic_root, tokenizer_dir, tmp_path):
    cfg = tiny_config(synthetic_root, tokenizer_dir, SAM2)
    model = seeded_pipeline(cfg).model
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(torch.randn_like(parameter))
    save_pretrained(model, cfg, tmp_path)
    rebuilt = build_pipeline(cfg).model
    load_trainable_weights(rebuilt, tmp_path)
    expected = model.state_dict()
    for name, tensor in rebuilt.state_dict().items():
        assert torch.equal(tensor, expected[name]), name


def test_sam2_checkpoint_directory(tmp_path, tiny_sam2):
    """A saved ``Sam2Model`` loads back whole; a missing directory, another model's directory, a
    checkpoint lacking a weight and a checkpoint of another input size are errors naming it."""
    saved = tmp_path / "sam2"
    tiny_sam2.save_pretrained(saved)
    loaded = build_sam2(saved, TinyDims(), SIZE)
    for name, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, tiny_sam2.state_dict()[name]), name

    absent = tmp_path / "absent"
    with pytest.raises(FileNotFoundError, match=rf"model\.sam2_path={absent}"):
        build_sam2(absent, TinyDims(), SIZE)
    other = tmp_path / "llava"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "llava"}))
    with pytest.raises(ValueError, match=rf"model\.sam2_path={other}: .* 'llava' checkpoint, not SAM2"):
        build_sam2(other, TinyDims(), SIZE)
    with pytest.raises(ValueError, match=r"works at 64 px; data\.sam_image_size is 128"):
        build_sam2(saved, TinyDims(), 128)
    partial = tmp_path / "partial"
    state = {name: tensor for name, tensor in tiny_sam2.state_dict().items() if name != "mask_decoder.iou_token.weight"}
    tiny_sam2.save_pretrained(partial, state_dict=state)
    with pytest.raises(ValueError, match=rf"{partial}: 1 weights of Sam2Model missing .*mask_decoder\.iou_token\.weight"):
        build_sam2(partial, TinyDims(), SIZE)


def test_sam2_config_keys(synthetic_root, tokenizer_dir, tmp_path):
    with pytest.raises(ConfigError, match=r"data\.feature_cache .* model\.mask_decoder=sam2"):
        tiny_config(synthetic_root, tokenizer_dir, SAM2, f"data.feature_cache={tmp_path}")
    with pytest.raises(ConfigError, match=r"model\.sam2_path applies to model\.mask_decoder=sam2"):
        tiny_config(synthetic_root, tokenizer_dir, f"model.sam2_path={tmp_path}")
    with pytest.raises(ConfigError, match=r"model\.sam_checkpoint applies to model\.mask_decoder=sam"):
        tiny_config(synthetic_root, tokenizer_dir, SAM2, f"model.sam_checkpoint={tmp_path}/sam.pth")
    assert tiny_config(synthetic_root, tokenizer_dir, SAM2, "model.sam_type=vit_h").model.mask_decoder == "sam2"
    with pytest.raises(TypeError, match="no mask head for Linear"):
        mask_head_of(torch.nn.Linear(1, 1), SIZE)


def test_sam2_merged_export_reloads_to_the_same_masks(synthetic_root, tokenizer_dir, tmp_path):
    cfg = tiny_config(synthetic_root, tokenizer_dir, SAM2)
    model = seeded_pipeline(cfg).model.eval()
    with torch.no_grad():
        for parameter in model.visual_model.mask_decoder.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    merged_cfg, _ = write_merged(model, cfg, tmp_path)
    save_pretrained(model, merged_cfg, tmp_path)
    assert merged_cfg.model.sam2_path == str((tmp_path / "sam2").resolve()) and not (tmp_path / "sam.pth").exists()
    reloaded = build_pipeline(merged_cfg)
    load_trainable_weights(reloaded.model, tmp_path)
    batch = _non_square_batch(reloaded)
    for before, after in zip(model.predict(batch, "teacher-forced"), reloaded.model.eval().predict(batch, "teacher-forced")):
        assert torch.equal(before.masks, after.masks)


def test_the_feature_cache_refuses_sam2(synthetic_root, tokenizer_dir):
    model = seeded_pipeline(tiny_config(synthetic_root, tokenizer_dir, SAM2)).model
    with pytest.raises(ValueError, match="model.mask_decoder=sam2"):
        encoder_layout(model, 32)
