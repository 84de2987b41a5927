"""Loading transformers models without their generic load reports, checking what the reports
would say ourselves: a weight the model expects and the checkpoint lacks is an error naming the
checkpoint; a checkpoint weight with no place in the model is reported once, in our words, unless
the caller reads it elsewhere (LLaVA's ``mm_projector`` beside the decoder, CLIP's text tower)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import transformers

LOGGER = logging.getLogger(__name__)


@contextmanager
def transformers_notices_silenced() -> Iterator[None]:
    """transformers' own logging below ERROR for the duration (its load reports, and the
    resizing notice about rows that the caller initialises or overwrites itself)."""
    logger = transformers.utils.logging.get_logger("transformers")
    previous = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(previous)


def load_checked(
    model_class: Any, path: str | Path, dtype: torch.dtype, read_elsewhere: tuple[str, ...] = (), config: Any = None
) -> Any:
    """``model_class.from_pretrained(path)`` in ``dtype`` (with ``config`` when given); ValueError
    naming ``path`` when a weight is missing, a warning listing the checkpoint weights left unread
    (those starting with a prefix of ``read_elsewhere`` are expected and not listed)."""
    with transformers_notices_silenced():
        model, info = model_class.from_pretrained(str(path), config=config, dtype=dtype, output_loading_info=True)
    if info["missing_keys"]:
        missing = sorted(info["missing_keys"])
        raise ValueError(f"{path}: {len(missing)} weights of {model_class.__name__} missing from the checkpoint: {missing[:10]}")
    unread = sorted(key for key in info["unexpected_keys"] if not key.startswith(read_elsewhere))
    if unread:
        LOGGER.warning("%s: %d checkpoint weights have no place in %s and are not read: %s", path, len(unread), model_class.__name__, unread[:10])
    return model
