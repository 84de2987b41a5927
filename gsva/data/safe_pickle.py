"""Loading annotation pickles without running code from them.

The refs files of RefCOCO, RefCOCO+, RefCOCOg, RefCLEF (``refs(<split_by>).p``)
and Ref-ZOM (``Ref_ZOM.p``) are pickles of plain data: lists, dicts, strings
and numbers. A pickle can name any importable callable and have it called
while loading, so :func:`load_pickle` refuses every global except the
built-in ``set`` and ``frozenset`` (which protocols 0-3 reach through a
global, spelled ``__builtin__`` by Python 2 and ``builtins`` by Python 3).

Python 2 wrote its ``str`` values as raw bytes (``BINSTRING`` opcodes), with
no encoding recorded. A file is first read with every such value decoded as
UTF-8 (ASCII included), which is fast. If some value is not valid UTF-8, the
file is read again with those values kept as bytes, and each is decoded on its
own: as UTF-8 when it is valid UTF-8, else as Latin-1, which maps every byte to
a character, so no file fails on its text. Annotation pickles hold no binary
data, so every byte string is taken as text.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

_ALLOWED_GLOBALS = frozenset(
    (module, name) for module in ("builtins", "__builtin__") for name in ("set", "frozenset")
)


class _PlainDataUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals in ``_ALLOWED_GLOBALS``."""

    def __init__(self, handle: Any, path: Path, encoding: str) -> None:
        super().__init__(handle, encoding=encoding)
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(
                f"{self._path}: refused to load {module}.{name}: "
                "only plain containers and scalars are allowed in annotation pickles"
            )
        return super().find_class(module, name)


def load_pickle(path: Path | str) -> Any:
    """Load a pickle of plain data (containers, strings, numbers); see the module docstring.

    Raises ``pickle.UnpicklingError`` naming ``path`` and the global when the
    pickle refers to anything but the built-in ``set`` / ``frozenset``.
    """
    path = Path(path)
    try:
        return _load(path, encoding="utf-8")
    except UnicodeDecodeError:
        return _decode_byte_strings(_load(path, encoding="bytes"))


def _load(path: Path, encoding: str) -> Any:
    """Unpickle ``path``, decoding Python 2 ``str`` values with ``encoding`` (``"bytes"``: keep them as bytes)."""
    with path.open("rb") as handle:
        return _PlainDataUnpickler(handle, path, encoding).load()


def _decode_byte_strings(value: Any) -> Any:
    """Copy of ``value`` with every ``bytes`` (a Python 2 ``str``) decoded to ``str``."""
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return value.decode("latin-1")
    if isinstance(value, list):
        return [_decode_byte_strings(item) for item in value]
    if isinstance(value, tuple):
        return tuple(_decode_byte_strings(item) for item in value)
    if isinstance(value, (set, frozenset)):
        return type(value)(_decode_byte_strings(item) for item in value)
    if isinstance(value, dict):
        return {_decode_byte_strings(key): _decode_byte_strings(item) for key, item in value.items()}
    return value
