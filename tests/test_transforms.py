"""Encoder inputs pixel for pixel as the released pipeline computes them, on sizes whose rounding
and truncation rules differ (odd sides, portrait and landscape, up- and down-scaling).

References: for SAM, the call the authors' ``ResizeLongestSide.apply_image`` makes
(``torchvision.transforms.functional.resize`` of a PIL image); for CLIP, the PIL-backed CLIP
image processor of ``transformers`` (the 4.x algorithm) without rescaling or normalising.
"""

import numpy as np
import pytest
import torch
from torchvision.transforms.functional import resize, to_pil_image
from transformers import CLIPImageProcessorPil

from gsva.data.transforms import clip_resize_crop, longest_side_shape, sam_resize, shortest_side_shape

SIZES = [(333, 500), (500, 333), (427, 640), (612, 612), (225, 1000), (97, 131), (1500, 999), (101, 100), (17, 23)]


@pytest.fixture(scope="module")
def clip_processor():
    return CLIPImageProcessorPil(
        size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}, do_rescale=False, do_normalize=False
    )


def _image(height: int, width: int) -> np.ndarray:
    """Smooth gradients plus noise: both interpolation kernels and rounding show."""
    rng = np.random.default_rng(height * 7919 + width)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / max(width - 1, 1), y * 255 / max(height - 1, 1), (x + y) % 256], axis=-1)
    return np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("height, width", SIZES)
def test_sam_input_is_the_released_resize(height, width):
    image = _image(height, width)
    expected = np.array(resize(to_pil_image(image), list(longest_side_shape(height, width, 1024))))
    ours = sam_resize(image, 1024)
    assert ours.dtype == torch.uint8 and max(ours.shape[1:]) == 1024
    np.testing.assert_array_equal(ours.permute(1, 2, 0).numpy(), expected)


@pytest.mark.parametrize("height, width", SIZES)
def test_clip_input_is_the_clip_image_processor(clip_processor, height, width):
    image = _image(height, width)
    expected = clip_processor(image, return_tensors="pt")["pixel_values"][0]
    ours = clip_resize_crop(image, 224)
    assert ours.dtype == torch.uint8 and tuple(ours.shape) == (3, 224, 224)
    torch.testing.assert_close(ours.float(), expected.float(), rtol=0, atol=0)


def test_size_rules_round_sam_and_truncate_clip():
    # SAM rounds half up (int(x + 0.5)); CLIP truncates the long side: 224 * 640 / 427 = 335.7 -> 335.
    assert longest_side_shape(427, 640, 1024) == (683, 1024)
    assert longest_side_shape(333, 500, 1024) == (682, 1024)
    assert shortest_side_shape(427, 640, 224) == (224, 335)
    assert shortest_side_shape(640, 427, 224) == (335, 224)
    assert shortest_side_shape(612, 612, 224) == (224, 224)
