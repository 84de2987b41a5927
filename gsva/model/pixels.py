"""Pixel normalisation of the uint8 images of a batch, done on the device.

SAM: subtract SAM's pixel mean, divide by its std, and zero everything outside the resized image
(SAM pads the NORMALISED image with zeros). SAM2: stretch the resized image to the whole square
(no padding) and normalise with ImageNet's statistics, as transformers' ``Sam2ImageProcessor``
does. CLIP: scale to [0, 1] and normalise with the CLIP image processor's statistics (those of
``openai/clip-vit-large-patch14``).
"""

from __future__ import annotations

import torch
import torchvision.transforms.v2.functional as tvF

SAM_PIXEL_MEAN = (123.675, 116.28, 103.53)
SAM_PIXEL_STD = (58.395, 57.12, 57.375)
SAM2_PIXEL_MEAN = (0.485, 0.456, 0.406)
SAM2_PIXEL_STD = (0.229, 0.224, 0.225)
"""ImageNet's statistics on [0, 1] pixels (``Sam2ImageProcessor``'s ``image_mean``/``image_std``)."""
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _channel_vector(values: tuple[float, ...], like: torch.Tensor) -> torch.Tensor:
    """(1, 3, 1, 1) float32 on ``like``'s device, filled there (no host-to-device copy, which would
    synchronise with the device)."""
    return torch.stack([torch.full((), value, dtype=torch.float32, device=like.device) for value in values]).view(1, 3, 1, 1)


def normalize_sam_images(images: torch.Tensor, resized_sizes: list[tuple[int, int]]) -> torch.Tensor:
    """images: (B, 3, S, S) uint8 in any memory layout, zero-padded bottom-right -> (B, 3, S, S)
    float32 SAM input, contiguous."""
    normalised = (images.contiguous().float() - _channel_vector(SAM_PIXEL_MEAN, images)) / _channel_vector(SAM_PIXEL_STD, images)
    for index, (height, width) in enumerate(resized_sizes):
        normalised[index, :, height:].zero_()
        normalised[index, :, :, width:].zero_()
    return normalised


def normalize_sam2_images(images: torch.Tensor, resized_sizes: list[tuple[int, int]]) -> torch.Tensor:
    """images: (B, 3, S, S) uint8, image b in its top-left ``resized_sizes[b]`` corner (the rest is
    padding) -> (B, 3, S, S) float32 SAM2 input, contiguous.

    ``Sam2ImageProcessor``'s steps on each image: resize to S x S, bilinear with antialiasing,
    to uint8 (``torchvision``'s ``resize``, the call the processor makes: on a CPU its integer
    kernel, on a GPU float arithmetic rounded, which may differ by one grey level), then
    ``(x - 255·mean) / (255·std)`` in float32. The processor resizes the image it is given; here
    that is the image the data path resized to longest side S (``gsva.data.transforms.sam_resize``),
    so its short side is resampled twice (PIL bilinear down to S·short/long, then up to S here)
    where the processor on the original image resamples once.
    """
    size = images.shape[-1]
    stretched = torch.stack(
        [
            tvF.resize(image[:, :height, :width], [size, size], interpolation=tvF.InterpolationMode.BILINEAR, antialias=True)
            for image, (height, width) in zip(images, resized_sizes)
        ]
    )
    mean = _channel_vector(SAM2_PIXEL_MEAN, images) * 255.0
    std = _channel_vector(SAM2_PIXEL_STD, images) * 255.0
    return ((stretched.float() - mean) / std).contiguous()


def normalize_clip_images(images: torch.Tensor) -> torch.Tensor:
    """images: (B, 3, C, C) uint8 -> (B, 3, C, C) float32 CLIP input."""
    scaled = images.float() / 255.0
    return (scaled - _channel_vector(CLIP_MEAN, images)) / _channel_vector(CLIP_STD, images)
