"""``data.clip_preprocess``: LLaVA-1.5's pad-to-square, pixel for pixel what its processor gives."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from transformers import CLIPImageProcessorPil

from gsva.config import load_config
from gsva.data.sample_builder import SampleSettings
from gsva.data.transforms import CLIP_MEAN_COLOUR, CLIP_PREPROCESSING, clip_pad_resize

SIZE = 336


def llava_1_5_pixels(image: np.ndarray) -> np.ndarray:
    """The image LLaVA-1.5 feeds its CLIP tower, before rescaling and normalisation: centred on a
    square of the processor's mean colour (PIL paste), then the CLIP processor's resize and crop
    (its PIL implementation, the one LLaVA-1.5 ran)."""
    pil = Image.fromarray(image)
    width, height = pil.size
    square = Image.new(pil.mode, (max(width, height),) * 2, CLIP_MEAN_COLOUR)
    square.paste(pil, ((max(width, height) - width) // 2, (max(width, height) - height) // 2))
    processor = CLIPImageProcessorPil(size={"shortest_edge": SIZE}, crop_size={"height": SIZE, "width": SIZE},
                                   do_rescale=False, do_normalize=False)
    return np.asarray(processor(images=square, return_tensors="np")["pixel_values"][0]).round().astype(np.uint8)


@pytest.mark.parametrize("shape", [(200, 320), (320, 200), (123, 77), (64, 64)])
def test_pad_to_square_equals_llava_1_5s_processor(shape):
    image = np.random.default_rng(sum(shape)).integers(0, 256, (*shape, 3), dtype=np.uint8)
    ours = clip_pad_resize(image, SIZE).numpy()
    assert ours.shape == (3, SIZE, SIZE)
    assert np.array_equal(ours, llava_1_5_pixels(image))


def test_the_config_chooses_the_preprocessing():
    settings = SampleSettings.from_config(load_config(None, ["model.sam_type=tiny", "data.clip_preprocess=pad"]).data)
    assert CLIP_PREPROCESSING[settings.clip_preprocess] is clip_pad_resize
    wide = np.zeros((10, 40, 3), dtype=np.uint8)
    assert (CLIP_PREPROCESSING["pad"](wide, 8).numpy()[:, 0] != 0).all()  # padding rows above the image
    assert (CLIP_PREPROCESSING["crop"](wide, 8).numpy() == 0).all()
