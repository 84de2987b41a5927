"""Files written whole or not at all (reports, configs, weights, pointers, manifests, images).

Each file is written to a temporary file in its own directory, flushed to disk, then renamed over
the destination (``os.replace``, atomic on one file system): a reader, or a run interrupted at any
point, sees either the previous file or the new one, never a part of it.
"""

from __future__ import annotations

import io
import json
import os
import secrets
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
from safetensors.torch import save as safetensors_bytes


def write_text_atomic(path: str | Path, text: str) -> None:
    """Replace ``path`` with ``text`` (UTF-8) atomically; parent directories are created."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically; parent directories are created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with temporary.open("xb") as stream:  # a new file, with the permissions the umask gives
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    sync_directory(path.parent)


def sync_directory(directory: Path) -> None:
    """Make a rename inside ``directory`` durable (POSIX; a no-op where directories cannot be opened)."""
    try:
        handle = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass  # some file systems cannot sync a directory; the rename itself is atomic all the same
    finally:
        os.close(handle)


def write_json_atomic(path: str | Path, payload: Any) -> None:
    """Replace ``path`` with ``payload`` as indented JSON, atomically."""
    write_text_atomic(path, json.dumps(payload, indent=2) + "\n")


def write_jsonl_atomic(path: str | Path, rows: Iterable[Any]) -> None:
    """Replace ``path`` with one JSON document per line, atomically."""
    write_text_atomic(path, "".join(json.dumps(row) + "\n" for row in rows))


def write_safetensors_atomic(path: str | Path, tensors: Mapping[str, torch.Tensor]) -> None:
    """Replace ``path`` with ``tensors`` in the safetensors format (contiguous copies), atomically."""
    write_bytes_atomic(path, safetensors_bytes({name: tensor.contiguous() for name, tensor in tensors.items()}, metadata={"format": "pt"}))


def write_torch_atomic(path: str | Path, payload: Any) -> None:
    """Replace ``path`` with ``torch.save(payload)``, atomically."""
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    write_bytes_atomic(path, buffer.getvalue())
