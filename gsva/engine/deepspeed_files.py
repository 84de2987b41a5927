"""Reading DeepSpeed checkpoint files without running code from them.

A ``.pt`` file is a pickle, and a pickle can name any importable callable and have it called while
loading. DeepSpeed's model-states and ZeRO optimizer-states files hold tensors, plain containers
and four DeepSpeed classes: the loss scaler (``LossScaler``; ``DynamicLossScaler`` in fp16), the
ZeRO stage (``ZeroStageEnum``) and the parameter fragment addresses of the optimizer partitions
(``fragment_address``). :func:`load_deepspeed_file` reads a file with ``torch.load(weights_only=True)``
allowing exactly those classes; anything else is refused with ``pickle.UnpicklingError``.

DeepSpeed's own ``zero_to_fp32`` unpickles its files without restriction:
:func:`check_deepspeed_files` reads each file it is about to open with the restricted loader first
(memory-mapped when it is in torch's zip format, so the tensors are not read), so that a file
holding anything else stops before DeepSpeed opens it.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

from gsva.tensor_files import load_tensor_file

DEEPSPEED_FILE_PATTERNS = ("*_model_states.pt", "*_optim_states.pt")
"""The files of a checkpoint tag directory that DeepSpeed's ``zero_to_fp32`` reads."""


def deepspeed_checkpoint_classes() -> list[type]:
    """The non-tensor classes DeepSpeed writes into its checkpoint files (see the module docstring)."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


def load_deepspeed_file(path: str | Path, mmap: bool = False) -> dict[str, Any]:
    """One DeepSpeed checkpoint file on the CPU, read with ``weights_only`` and DeepSpeed's
    checkpoint classes allowed; ``pickle.UnpicklingError`` naming the file and the refused global
    when it holds anything else. ``mmap``: leave the tensors in the file until they are read."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"DeepSpeed checkpoint file not found: {path}")
    return load_tensor_file(
        path, deepspeed_checkpoint_classes(), mmap=mmap,
        holds="tensors and DeepSpeed's checkpoint classes (a checkpoint written by this project's training holds nothing else)",
    )


def check_deepspeed_files(tag_dir: str | Path) -> None:
    """Read every model-states and optimizer-states file of ``tag_dir`` with the restricted
    loader (the tensors of torch's zip format stay in the files); raises as :func:`load_deepspeed_file`."""
    for pattern in DEEPSPEED_FILE_PATTERNS:
        for file in sorted(Path(tag_dir).glob(pattern)):
            load_deepspeed_file(file, mmap=zipfile.is_zipfile(file))
