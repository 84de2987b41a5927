"""Image resizing for the two vision encoders, pixel for pixel as the released GSVA pipeline.

Every released GSVA checkpoint and every published number was produced with these exact encoder
inputs, so they are reproduced bit for bit (the parity test checks them against the authors'
``uint8`` inputs):

- SAM: the longest side scaled to S with the size rounded as SAM's ``ResizeLongestSide`` rounds it,
  then a PIL bilinear resize (antialiased when shrinking) of the ``uint8`` RGB image.
- CLIP: the shortest side scaled to C with the other side truncated to an integer, as the CLIP image
  processor of ``transformers`` 4.x computes it, a PIL bicubic resize, then a C×C centre crop whose
  top-left corner is rounded down.

OpenCV's resizers differ from PIL's (no antialiasing, other kernels): on COCO images they move the
CLIP input by up to 1.3 in normalised units, enough to change a model's decisions.

Workers only resize and keep ``uint8`` pixels: normalisation (and SAM's zero padding of the
normalised image) happens on the device, in the model (``gsva.model.pixels``), where it costs
nothing and moves four times fewer bytes between processes.
"""

from __future__ import annotations

import os

import cv2
import numpy as np
import torch
from PIL import Image

from gsva.data.bad_samples import BadSampleError


def longest_side_shape(height: int, width: int, target: int) -> tuple[int, int]:
    """(h, w) after scaling so that the longest side equals ``target`` (SAM's rule, rounded)."""
    scale = target / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


def shortest_side_shape(height: int, width: int, target: int) -> tuple[int, int]:
    """(h, w) after scaling so that the shortest side equals ``target``; the longest side is
    truncated (the CLIP image processor's rule)."""
    if width <= height:
        return int(target * height / width), target
    return target, int(target * width / height)


def _pil_resize(image: np.ndarray, height: int, width: int, resample: Image.Resampling) -> np.ndarray:
    """(H, W, 3) uint8 -> (height, width, 3) uint8 (a writable array) with PIL's resampler."""
    return np.array(Image.fromarray(image).resize((width, height), resample))


def sam_resize(image: np.ndarray, size: int) -> torch.Tensor:
    """image: (H, W, 3) uint8 RGB -> (3, h, w) uint8 with the longest side resized to ``size``."""
    resized = _pil_resize(image, *longest_side_shape(*image.shape[:2], size), Image.Resampling.BILINEAR)
    return torch.from_numpy(resized).permute(2, 0, 1)


def clip_resize_crop(image: np.ndarray, size: int) -> torch.Tensor:
    """image: (H, W, 3) uint8 RGB -> (3, size, size) uint8: shortest side to ``size``, centre crop."""
    new_h, new_w = shortest_side_shape(*image.shape[:2], size)
    resized = _pil_resize(image, new_h, new_w, Image.Resampling.BICUBIC)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    return torch.from_numpy(np.ascontiguousarray(resized[top : top + size, left : left + size])).permute(2, 0, 1)


CLIP_MEAN_COLOUR = (122, 116, 104)
"""CLIP's pixel mean (0.48145466, 0.4578275, 0.40821073) as uint8 RGB (``int(255 * mean)``): the
colour LLaVA-1.5 pads its images to a square with."""


def clip_pad_resize(image: np.ndarray, size: int, fill: tuple[int, int, int] = CLIP_MEAN_COLOUR) -> torch.Tensor:
    """image: (H, W, 3) uint8 RGB -> (3, size, size) uint8: centred on a square of its longest side
    filled with ``fill`` (LLaVA-1.5's ``expand2square``: the offset rounds down), then resized to
    ``size`` (the CLIP processor's bicubic resize; its centre crop is then a no-op)."""
    height, width = image.shape[:2]
    side = max(height, width)
    square = np.empty((side, side, 3), dtype=np.uint8)
    square[:] = fill
    top, left = (side - height) // 2, (side - width) // 2
    square[top : top + height, left : left + width] = image
    return clip_resize_crop(square, size)


CLIP_PREPROCESSING = {"crop": clip_resize_crop, "pad": clip_pad_resize}
"""``data.clip_preprocess`` -> (H, W, 3) uint8 image, size -> (3, size, size) uint8."""


def read_rgb(path: str) -> np.ndarray:
    """Read an image file as (H, W, 3) uint8 RGB; ``BadSampleError`` when the file is missing or
    cannot be decoded."""
    if not os.path.isfile(path):
        raise BadSampleError(path, "image file not found", "missing image")
    image = cv2.imread(path, cv2.IMREAD_COLOR)
    if image is None:
        raise BadSampleError(path, "cannot decode the image file (corrupt, truncated or not an image)", "unreadable image")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
