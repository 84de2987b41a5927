"""Mask losses of GSVA: per-mask BCE (pixel mean) and DICE (LISA's scaled form).

Both return the SUM over masks; the caller divides by the normaliser of its convention.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

DICE_SCALE = 1000.0
DICE_EPS = 1e-6


def bce_per_mask(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """logits, targets: (M, H, W) -> (M,) mean binary cross-entropy over pixels."""
    return F.binary_cross_entropy_with_logits(logits, targets, reduction="none").flatten(1).mean(1)


def dice_per_mask(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """logits, targets: (M, H, W) -> (M,) DICE loss 1 - (2|P∩G| + eps) / (|P| + |G| + eps) on scaled sums."""
    probabilities = logits.sigmoid().flatten(1)
    targets = targets.flatten(1)
    numerator = 2 * (probabilities / DICE_SCALE * targets).sum(-1)
    denominator = (probabilities / DICE_SCALE).sum(-1) + (targets / DICE_SCALE).sum(-1)
    return 1 - (numerator + DICE_EPS) / (denominator + DICE_EPS)


def rejected_row_losses(height: int, width: int) -> tuple[float, float]:
    """BCE and DICE of an all-zero-logit row against an empty mask (the authors' ``[REJ]`` rows)."""
    bce = math.log(2.0)
    dice = 1 - DICE_EPS / (0.5 * height * width / DICE_SCALE + DICE_EPS)
    return bce, dice
