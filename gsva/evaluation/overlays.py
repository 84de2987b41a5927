"""Mask overlays as PNG files a person can open: prediction beside ground truth, one colour per
expression, and a legend with each expression's ``[SEG]``/``[REJ]`` decision."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from gsva.atomic import write_bytes_atomic

PALETTE = [
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
    (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212),
]
MIN_SIDE = 256
LINE_HEIGHT = 18


def _paint(image: np.ndarray, masks: list[np.ndarray]) -> np.ndarray:
    canvas = image.astype(np.float32)
    for index, mask in enumerate(masks):
        colour = np.array(PALETTE[index % len(PALETTE)], dtype=np.float32)
        canvas[mask] = 0.45 * canvas[mask] + 0.55 * colour
    return canvas.astype(np.uint8)


def _enlarged(panel: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    """``panel`` scaled by a whole factor (nearest neighbour) so that an image of ``image_size``
    (H, W) in it shows at least ``MIN_SIDE`` pixels on its shorter side."""
    scale = max(1, MIN_SIDE // min(image_size))
    return cv2.resize(panel, (panel.shape[1] * scale, panel.shape[0] * scale), interpolation=cv2.INTER_NEAREST)


FONT, FONT_SCALE, MARGIN = cv2.FONT_HERSHEY_SIMPLEX, 0.45, 4


def text_width(text: str) -> int:
    """Pixels ``text`` takes in the legend's font."""
    return cv2.getTextSize(text, FONT, FONT_SCALE, 1)[0][0]


def wrap_text(text: str, width: int) -> list[str]:
    """``text`` in lines of at most ``width`` pixels, broken between words (a word longer than a
    line is broken inside); joined with spaces, the lines give back every word in order."""
    lines: list[str] = []
    for word in text.split():
        candidate = f"{lines[-1]} {word}" if lines else word
        if lines and text_width(candidate) <= width:
            lines[-1] = candidate
            continue
        while text_width(word) > width and len(word) > 1:
            cut = max(end for end in range(1, len(word) + 1) if end == 1 or text_width(word[:end]) <= width)
            lines.append(word[:cut])
            word = word[cut:]
        lines.append(word)
    return lines or [""]


def _legend(lines: list[tuple[str, tuple[int, int, int]]], width: int) -> np.ndarray:
    """A white (rows, ``width``, 3) uint8 RGB strip with each (text, colour) entry written in its
    colour, wrapped to the strip's width."""
    rows = [(line, colour) for text, colour in lines for line in wrap_text(text, width - 2 * MARGIN)]
    legend = np.full((LINE_HEIGHT * len(rows) + 6, width, 3), 255, np.uint8)
    for row, (text, colour) in enumerate(rows):
        cv2.putText(legend, text, (MARGIN, 14 + LINE_HEIGHT * row), FONT, FONT_SCALE, colour, 1, cv2.LINE_AA)
    return legend


def decision_token(rejected: bool) -> str:
    """How a slot decision is written: ``[REJ]`` or ``[SEG]``."""
    return "[REJ]" if rejected else "[SEG]"


def render_overlay(
    image: np.ndarray,
    expressions: list[str],
    predicted_masks: list[np.ndarray],
    predicted_rejected: list[bool],
    target_masks: list[np.ndarray],
    target_exists: list[bool],
) -> np.ndarray:
    """(H, W, 3) uint8 RGB + per-expression (H, W) bool masks -> an RGB panel.

    Left: predictions (rejected expressions unpainted); right: ground truth; below: legend
    ``expression: predicted (ground truth)`` in the expression's colour.
    """
    shown_pred = [m if not r else np.zeros_like(m) for m, r in zip(predicted_masks, predicted_rejected)]
    panel = np.concatenate([_paint(image, shown_pred), np.full((image.shape[0], 4, 3), 255, np.uint8), _paint(image, target_masks)], 1)
    panel = _enlarged(panel, image.shape[:2])
    lines = [("prediction | ground truth", (0, 0, 0))]
    for index, (text, rejected, exists) in enumerate(zip(expressions, predicted_rejected, target_exists)):
        mark = "ok" if rejected != exists else "WRONG"
        lines.append((f"{text}: {decision_token(rejected)} (gt {decision_token(not exists)}) {mark}", PALETTE[index % len(PALETTE)]))
    return np.concatenate([panel, _legend(lines, panel.shape[1])], 0)


def render_prediction(
    image: np.ndarray, expressions: list[str], masks: list[np.ndarray], rejected: list[bool], answer: str
) -> np.ndarray:
    """(H, W, 3) uint8 RGB + per-expression (H, W) bool masks -> an RGB panel without ground truth:
    the image with each ``[SEG]`` mask in its expression's colour and, below, the answer and a
    legend ``expression: [SEG]|[REJ]`` in the expression's colour."""
    shown = [mask if not is_rejected else np.zeros_like(mask) for mask, is_rejected in zip(masks, rejected)]
    panel = _enlarged(_paint(image, shown), image.shape[:2])
    lines = [(f"answer: {answer}", (0, 0, 0))] + [
        (f"{text}: {decision_token(is_rejected)}", PALETTE[index % len(PALETTE)])
        for index, (text, is_rejected) in enumerate(zip(expressions, rejected))
    ]
    legend = _legend(lines, max(panel.shape[1], 400))
    padded = np.full((panel.shape[0], legend.shape[1], 3), 255, np.uint8)
    padded[:, : panel.shape[1]] = panel
    return np.concatenate([padded, legend], 0)


def save_overlay(path: str | Path, panel: np.ndarray) -> None:
    """Write the RGB ``panel`` as an image file (format from the suffix, e.g. ``.png``), atomically."""
    path = Path(path)
    try:
        encoded, data = cv2.imencode(path.suffix, cv2.cvtColor(panel, cv2.COLOR_RGB2BGR))
    except cv2.error:
        encoded = False
    if not encoded:
        raise OSError(f"could not encode overlay {path}: image suffix {path.suffix!r} not supported; use .png or .jpg")
    write_bytes_atomic(path, data.tobytes())
