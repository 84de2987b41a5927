"""Image preprocessing for the two vision encoders (OpenCV, no PIL round trips).

SAM: resize the longest side to S, normalise with SAM's pixel statistics, zero-pad bottom-right
to S×S. CLIP: resize the shortest side to C (bicubic), centre-crop C×C, scale to [0, 1] and
normalise with CLIP's statistics.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

SAM_PIXEL_MEAN = np.array([123.675, 116.28, 103.53], dtype=np.float32)
SAM_PIXEL_STD = np.array([58.395, 57.12, 57.375], dtype=np.float32)
CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)


def longest_side_shape(height: int, width: int, target: int) -> tuple[int, int]:
    """(h, w) after scaling so that the longest side equals ``target`` (SAM's rule, rounded)."""
    scale = target / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


def sam_preprocess(image: np.ndarray, size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """image: (H, W, 3) uint8 RGB -> ((3, size, size) float32, (h, w) resized size before padding)."""
    height, width = image.shape[:2]
    resized_h, resized_w = longest_side_shape(height, width, size)
    interpolation = cv2.INTER_LINEAR if resized_h >= height else cv2.INTER_AREA
    resized = cv2.resize(image, (resized_w, resized_h), interpolation=interpolation)
    normalised = (resized.astype(np.float32) - SAM_PIXEL_MEAN) / SAM_PIXEL_STD
    padded = np.zeros((size, size, 3), dtype=np.float32)
    padded[:resized_h, :resized_w] = normalised
    return torch.from_numpy(padded).permute(2, 0, 1).contiguous(), (resized_h, resized_w)


def clip_preprocess(image: np.ndarray, size: int) -> torch.Tensor:
    """image: (H, W, 3) uint8 RGB -> (3, size, size) float32."""
    height, width = image.shape[:2]
    scale = size / min(height, width)
    new_h, new_w = max(size, round(height * scale)), max(size, round(width * scale))
    resized = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_CUBIC)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    cropped = resized[top : top + size, left : left + size].astype(np.float32) / 255.0
    normalised = (cropped - CLIP_MEAN) / CLIP_STD
    return torch.from_numpy(normalised).permute(2, 0, 1).contiguous()


def read_rgb(path: str) -> np.ndarray:
    """Read an image file as (H, W, 3) uint8 RGB; a clear error when it cannot be decoded."""
    image = cv2.imread(path, cv2.IMREAD_COLOR)
    if image is None:
        raise OSError(f"cannot read image {path}: missing or not a decodable image file")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
