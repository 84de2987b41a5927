"""Reading ``torch.save`` files (``.pth``, ``.bin``, ``.pt``) without running code from them.

Such a file is a pickle, and a pickle can name any importable callable and have it called while
loading. :func:`load_tensor_file` reads with ``torch.load(weights_only=True)``, which admits
tensors, plain containers and scalars (and the classes a caller allows); any other object is
refused with ``pickle.UnpicklingError`` naming the file and the refused global.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any, Sequence

import torch


def refused_global(error: Exception) -> str:
    """What torch's weights-only error refused ("Unsupported global: GLOBAL posix.system"),
    without its advice to allow it."""
    found = re.search(r"Unsupported global: GLOBAL [\w.]+", str(error))
    if found:
        return found.group(0)
    lines = [line.strip() for line in str(error).splitlines() if line.strip() and "weights_only" not in line]
    return (lines or [type(error).__name__])[0]


def load_tensor_file(
    path: str | Path, allowed_classes: Sequence[type] = (), mmap: bool = False, holds: str = "tensors"
) -> Any:
    """The content of ``path`` on the CPU, read with ``weights_only`` and ``allowed_classes``
    admitted; ``pickle.UnpicklingError`` naming the file and the refused global when it holds
    anything else (``holds`` says what it should hold). ``mmap``: leave the tensors in the file
    until they are read (torch's zip format only)."""
    path = Path(path)
    try:
        with torch.serialization.safe_globals(list(allowed_classes)):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as error:
        raise pickle.UnpicklingError(
            f"{path}: refused to load: it holds objects other than {holds} ({refused_global(error)}). "
            "Nothing in it was run. Load only files from a source you trust; re-save a trusted one "
            "with its tensors alone (torch.save(state_dict)) or as safetensors"
        ) from None
