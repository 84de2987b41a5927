"""Image resizing for the two vision encoders (OpenCV, no PIL round trips).

Workers only resize and keep ``uint8`` pixels: normalisation (and SAM's zero padding of the
normalised image) happens on the device, in the model (``gsva.model.pixels``), where it costs
nothing and moves four times fewer bytes between processes.

SAM: resize the longest side to S. CLIP: resize the shortest side to C (bicubic) and centre-crop
C×C.
"""

from __future__ import annotations

import os

import cv2
import numpy as np
import torch

from gsva.data.bad_samples import BadSampleError


def longest_side_shape(height: int, width: int, target: int) -> tuple[int, int]:
    """(h, w) after scaling so that the longest side equals ``target`` (SAM's rule, rounded)."""
    scale = target / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


def sam_resize(image: np.ndarray, size: int) -> torch.Tensor:
    """image: (H, W, 3) uint8 RGB -> (3, h, w) uint8 with the longest side resized to ``size``."""
    height, width = image.shape[:2]
    resized_h, resized_w = longest_side_shape(height, width, size)
    interpolation = cv2.INTER_LINEAR if resized_h >= height else cv2.INTER_AREA
    resized = cv2.resize(image, (resized_w, resized_h), interpolation=interpolation)
    return torch.from_numpy(resized).permute(2, 0, 1)


def clip_resize_crop(image: np.ndarray, size: int) -> torch.Tensor:
    """image: (H, W, 3) uint8 RGB -> (3, size, size) uint8: shortest side to ``size``, centre crop."""
    height, width = image.shape[:2]
    scale = size / min(height, width)
    new_h, new_w = max(size, round(height * scale)), max(size, round(width * scale))
    resized = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_CUBIC)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    return torch.from_numpy(np.ascontiguousarray(resized[top : top + size, left : left + size])).permute(2, 0, 1)


def read_rgb(path: str) -> np.ndarray:
    """Read an image file as (H, W, 3) uint8 RGB; ``BadSampleError`` when the file is missing or
    cannot be decoded."""
    if not os.path.isfile(path):
        raise BadSampleError(path, "image file not found", "missing image")
    image = cv2.imread(path, cv2.IMREAD_COLOR)
    if image is None:
        raise BadSampleError(path, "cannot decode the image file (corrupt, truncated or not an image)", "unreadable image")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
