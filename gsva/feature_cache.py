"""On-disk, memory-mapped cache of frozen image-encoder outputs.

The SAM image-encoder embedding (e.g. ``(256, 64, 64)``) and the CLIP patch
features (e.g. ``(256, 1024)``) of an image are computed once and reused across
epochs. An entry is keyed by :func:`image_key`, a content hash of the exact
uint8 encoder inputs; the cache as a whole is tied to a :class:`FeatureLayout`,
whose fingerprint (see :func:`module_fingerprint`) identifies the encoder
weights and preprocessing settings.

Directory layout::

    root/manifest.json                        {"format_version": 1, "layout": {...}}
    root/shard-{writer}-{n:05d}.bin           count fixed-size records (sam bytes, then clip bytes)
    root/shard-{writer}-{n:05d}.keys.json     JSON list of the count keys, in record order

Several writers (one per rank, or successive runs) add shards to one directory
concurrently, each under its own ``writer_name``. A shard is published
atomically: both files are written under temporary names starting with ".",
flushed to disk, then the data file is renamed into place first and the keys
file last. A shard exists for readers only once its keys file exists, so a crash
mid-write leaves only dot-temp files (or an orphan data file), which readers
ignore.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

import numpy as np
import torch

from gsva.atomic import sync_directory, write_text_atomic

CACHE_FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
PRECOMPUTE_SCRIPT = "scripts/precompute_features.py"

_DTYPES = ("float32", "bfloat16", "float16")
_WRITER_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]*")
_KEYS_SUFFIX = ".keys.json"
_DATA_SUFFIX = ".bin"


@dataclass(frozen=True)
class FeatureLayout:
    """What every record of a cache holds and which encoders produced it.

    ``sam_shape`` and ``clip_shape`` are per-image shapes (no batch dimension),
    e.g. ``(256, 64, 64)`` and ``(256, 1024)``; ``dtype`` is a torch dtype name,
    one of ``"float32"``, ``"bfloat16"``, ``"float16"``.
    """

    fingerprint: str
    sam_shape: tuple[int, ...]
    clip_shape: tuple[int, ...]
    dtype: str

    def __post_init__(self) -> None:
        if not isinstance(self.fingerprint, str) or not self.fingerprint:
            raise ValueError(f"FeatureLayout.fingerprint must be a non-empty string, got {self.fingerprint!r}")
        for field in ("sam_shape", "clip_shape"):
            shape = tuple(int(size) for size in getattr(self, field))
            if not shape or any(size <= 0 for size in shape):
                raise ValueError(f"FeatureLayout.{field} must be a non-empty tuple of positive sizes, got {shape}")
            object.__setattr__(self, field, shape)
        if self.dtype not in _DTYPES:
            raise ValueError(f"FeatureLayout.dtype must be one of {', '.join(_DTYPES)}, got {self.dtype!r}")

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)

    @property
    def sam_bytes(self) -> int:
        """Bytes of one SAM embedding (``prod(sam_shape) * itemsize``)."""
        return math.prod(self.sam_shape) * self.torch_dtype.itemsize

    @property
    def clip_bytes(self) -> int:
        """Bytes of one CLIP feature map (``prod(clip_shape) * itemsize``)."""
        return math.prod(self.clip_shape) * self.torch_dtype.itemsize

    @property
    def record_bytes(self) -> int:
        """Bytes of one record: the SAM embedding followed by the CLIP features."""
        return self.sam_bytes + self.clip_bytes

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable form (shapes as lists)."""
        data = asdict(self)
        data["sam_shape"] = list(self.sam_shape)
        data["clip_shape"] = list(self.clip_shape)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureLayout:
        return cls(
            fingerprint=data["fingerprint"],
            sam_shape=tuple(data["sam_shape"]),
            clip_shape=tuple(data["clip_shape"]),
            dtype=data["dtype"],
        )

    def describe(self) -> str:
        return (
            f"fingerprint {self.fingerprint}, sam_shape {self.sam_shape}, "
            f"clip_shape {self.clip_shape}, dtype {self.dtype}"
        )


def _uint8_bytes(tensor: torch.Tensor) -> np.ndarray:
    """The raw bytes of ``tensor`` (any dtype, any device) as a flat C-contiguous uint8 array."""
    return tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy()


def image_key(sam_image: torch.Tensor, clip_image: torch.Tensor) -> str:
    """Content hash of one image's encoder inputs (hex blake2b, digest size 16).

    ``sam_image`` is the unpadded SAM input ``(3, h, w)`` uint8 and ``clip_image``
    the CLIP input ``(3, C, C)`` uint8. Both shapes are hashed with the bytes, so
    the same bytes under another shape give another key.
    """
    digest = hashlib.blake2b(digest_size=16)
    for name, image in (("sam", sam_image), ("clip", clip_image)):
        if image.dtype != torch.uint8:
            raise ValueError(f"image_key: {name}_image must be uint8 (the exact encoder input), got {image.dtype}")
        digest.update(f"{name}{tuple(image.shape)};".encode())
        digest.update(_uint8_bytes(image))
    return digest.hexdigest()


def module_fingerprint(modules: dict[str, torch.nn.Module], settings: dict[str, Any]) -> str:
    """Hex blake2b (digest size 16) identifying encoder weights and preprocessing settings.

    Hashes, for each module name in sorted order, every ``state_dict`` entry (in
    sorted entry order: name, dtype, shape and raw bytes; entries may live on
    any device and have any dtype, bfloat16 included), then
    ``json.dumps(settings, sort_keys=True)``. Any changed weight or setting
    changes the fingerprint.
    """
    digest = hashlib.blake2b(digest_size=16)
    for module_name in sorted(modules):
        digest.update(f"module:{module_name};".encode())
        state = modules[module_name].state_dict()
        for entry in sorted(state):
            value = state[entry]
            if not isinstance(value, torch.Tensor):
                raise TypeError(
                    f"module_fingerprint: state_dict entry {module_name}.{entry} is a {type(value).__name__}, "
                    "not a tensor; only tensor state can be fingerprinted"
                )
            digest.update(f"{entry}:{value.dtype}:{tuple(value.shape)};".encode())
            digest.update(_uint8_bytes(value))
    digest.update(json.dumps(settings, sort_keys=True).encode())
    return digest.hexdigest()


def _write_synced(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def _read_manifest(root: Path) -> FeatureLayout:
    """The layout recorded in ``root/manifest.json`` (which must exist)."""
    path = root / MANIFEST_NAME
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        version = manifest["format_version"]
        layout_data = manifest["layout"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise ValueError(
            f"{path} is not a valid feature-cache manifest ({error}); delete the cache directory and rerun "
            f"{PRECOMPUTE_SCRIPT}"
        ) from error
    if version != CACHE_FORMAT_VERSION:
        raise ValueError(
            f"{path} has cache format version {version}, this code reads version {CACHE_FORMAT_VERSION}; "
            f"rerun {PRECOMPUTE_SCRIPT} into a new directory"
        )
    try:
        return FeatureLayout.from_dict(layout_data)
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(
            f"{path} has an invalid layout ({error}); delete the cache directory and rerun {PRECOMPUTE_SCRIPT}"
        ) from error


def _layout_differences(found: FeatureLayout, expected: FeatureLayout) -> str:
    """Names both fingerprints, and the shapes and dtype where they differ."""
    parts = [f"fingerprint {found.fingerprint} vs expected {expected.fingerprint}"]
    for field in ("sam_shape", "clip_shape", "dtype"):
        if getattr(found, field) != getattr(expected, field):
            parts.append(f"{field} {getattr(found, field)} vs expected {getattr(expected, field)}")
    return "; ".join(parts)


class FeatureCacheWriter:
    """Appends records to shards ``shard-{writer_name}-{n:05d}`` under ``root``.

    ``writer_name`` must be unique among writers running at the same time (e.g.
    include the rank); a later run may reuse it, its shards then take the next
    free numbers. Use as a context manager, or call :meth:`close` to publish the
    last shard.
    """

    def __init__(self, root: Path | str, layout: FeatureLayout, writer_name: str, shard_records: int = 256) -> None:
        if not _WRITER_NAME.fullmatch(writer_name):
            raise ValueError(
                f"FeatureCacheWriter: writer_name {writer_name!r} must use only letters, digits, '_' and '-' "
                "and must not start with '-'"
            )
        if shard_records < 1:
            raise ValueError(f"FeatureCacheWriter: shard_records must be at least 1, got {shard_records}")
        self.root = Path(root)
        self.layout = layout
        self.writer_name = writer_name
        self.shard_records = shard_records
        self._next_number = 0
        self._keys: list[str] = []
        self._data_file: BinaryIO | None = None
        self._temp_data: Path | None = None
        self._closed = False
        self._ensure_manifest()

    def _ensure_manifest(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        manifest = self.root / MANIFEST_NAME
        if not manifest.exists():
            manifest_data = {"format_version": CACHE_FORMAT_VERSION, "layout": self.layout.to_dict()}
            write_text_atomic(manifest, json.dumps(manifest_data, indent=2))
        found = _read_manifest(self.root)
        if found != self.layout:
            raise ValueError(
                f"{manifest} was written for another encoder layout: existing ({found.describe()}) vs this run "
                f"({self.layout.describe()}). Use a new --out directory or delete the old cache."
            )

    def add(self, key: str, sam: torch.Tensor, clip: torch.Tensor) -> None:
        """Append one record: ``sam`` of ``layout.sam_shape`` and ``clip`` of ``layout.clip_shape``, both in the
        layout dtype, on any device. Publishes the shard once it holds ``shard_records`` records."""
        if self._closed:
            raise RuntimeError(f"FeatureCacheWriter {self.writer_name!r} in {self.root} is closed; open a new writer")
        for name, tensor, shape in (("sam", sam, self.layout.sam_shape), ("clip", clip, self.layout.clip_shape)):
            if tuple(tensor.shape) != shape or tensor.dtype != self.layout.torch_dtype:
                raise ValueError(
                    f"FeatureCacheWriter.add({key!r}): {name} expected shape {shape} dtype {self.layout.dtype}, "
                    f"got shape {tuple(tensor.shape)} dtype {str(tensor.dtype).removeprefix('torch.')}"
                )
        if self._data_file is None:
            self._temp_data = self.root / f".shard-{self.writer_name}-{uuid.uuid4().hex}{_DATA_SUFFIX}.tmp"
            self._data_file = open(self._temp_data, "wb")
        self._data_file.write(_uint8_bytes(sam).data)
        self._data_file.write(_uint8_bytes(clip).data)
        self._keys.append(key)
        if len(self._keys) == self.shard_records:
            self._publish()

    def _shard_stem(self, number: int) -> str:
        return f"shard-{self.writer_name}-{number:05d}"

    def _publish(self) -> None:
        """Make the current shard visible: data file renamed into place first, keys file last."""
        assert self._data_file is not None and self._temp_data is not None
        self._data_file.flush()
        os.fsync(self._data_file.fileno())
        self._data_file.close()
        self._data_file = None
        temp_stem = self._temp_data.name.removesuffix(f"{_DATA_SUFFIX}.tmp")
        temp_keys = self.root / f"{temp_stem}{_KEYS_SUFFIX}.tmp"
        _write_synced(temp_keys, json.dumps(self._keys))
        number = self._next_number
        while any(
            (self.root / f"{self._shard_stem(number)}{suffix}").exists() for suffix in (_DATA_SUFFIX, _KEYS_SUFFIX)
        ):
            number += 1
        stem = self._shard_stem(number)
        os.replace(self._temp_data, self.root / f"{stem}{_DATA_SUFFIX}")
        sync_directory(self.root)
        os.replace(temp_keys, self.root / f"{stem}{_KEYS_SUFFIX}")
        sync_directory(self.root)
        self._next_number = number + 1
        self._temp_data = None
        self._keys = []

    def _discard(self) -> None:
        """Drop the unpublished shard and its temp file."""
        if self._data_file is not None:
            self._data_file.close()
            self._data_file = None
        if self._temp_data is not None:
            self._temp_data.unlink(missing_ok=True)
            self._temp_data = None
        self._keys = []

    def close(self) -> None:
        """Publish the last shard if it holds any record. Calling it again does nothing."""
        if self._closed:
            return
        self._closed = True
        if self._keys:
            self._publish()
        else:
            self._discard()

    def __enter__(self) -> FeatureCacheWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self._closed = True
            self._discard()


@dataclass(frozen=True)
class _Shard:
    data_path: Path
    count: int


class FeatureCache:
    """Read access to a feature cache directory; build one with :meth:`open`.

    Shards are memory-mapped lazily in each process; pickling drops the maps
    (keeping root, layout and the key index), so the cache is cheap to send to
    DataLoader workers.
    """

    def __init__(self, root: Path, layout: FeatureLayout) -> None:
        self.root = root
        self.layout = layout
        self._shards: list[_Shard] = []
        self._known_keys_files: set[str] = set()
        self._index: dict[str, tuple[int, int]] = {}  # key -> (shard position, record row)
        self._maps: dict[int, np.memmap] = {}

    @classmethod
    def open(cls, root: Path | str) -> FeatureCache:
        root = Path(root)
        if not (root / MANIFEST_NAME).is_file():
            raise FileNotFoundError(
                f"no feature cache at {root}: {root / MANIFEST_NAME} is missing; run {PRECOMPUTE_SCRIPT} to build it"
            )
        cache = cls(root, _read_manifest(root))
        cache.refresh()
        return cache

    def refresh(self) -> None:
        """Index shards published since the last scan; keys already indexed keep their record."""
        for keys_path in sorted(self.root.glob(f"shard-*{_KEYS_SUFFIX}")):
            if keys_path.name in self._known_keys_files:
                continue
            keys = self._read_keys(keys_path)
            data_path = keys_path.with_name(keys_path.name.removesuffix(_KEYS_SUFFIX) + _DATA_SUFFIX)
            self._check_data_size(data_path, len(keys))
            self._known_keys_files.add(keys_path.name)
            if not keys:
                continue
            position = len(self._shards)
            self._shards.append(_Shard(data_path, len(keys)))
            for row, key in enumerate(keys):
                self._index.setdefault(key, (position, row))

    @staticmethod
    def _read_keys(keys_path: Path) -> list[str]:
        problem = (
            f"{keys_path} is not a JSON list of keys; delete that shard (it and its {_DATA_SUFFIX} file) and rerun "
            f"{PRECOMPUTE_SCRIPT}"
        )
        try:
            keys = json.loads(keys_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise ValueError(problem) from error
        if not isinstance(keys, list) or not all(isinstance(key, str) for key in keys):
            raise ValueError(problem)
        return keys

    def _check_data_size(self, data_path: Path, count: int) -> None:
        expected = count * self.layout.record_bytes
        actual = data_path.stat().st_size if data_path.exists() else None
        if actual != expected:
            found = "is missing" if actual is None else f"has {actual} bytes"
            raise ValueError(
                f"feature cache shard {data_path} {found}, expected {expected} bytes ({count} records of "
                f"{self.layout.record_bytes}); delete that shard (it and its {_KEYS_SUFFIX} file) and rerun "
                f"{PRECOMPUTE_SCRIPT}"
            )

    def __len__(self) -> int:
        return len(self._index)

    def keys(self) -> set[str]:
        """Every key the cache holds (a copy)."""
        return set(self._index)

    def __contains__(self, key: str) -> bool:
        return key in self._index

    def _map(self, position: int) -> np.memmap:
        """The ``(count, record_bytes)`` uint8 memory map of shard ``position``, opened on first use."""
        mapped = self._maps.get(position)
        if mapped is None:
            shard = self._shards[position]
            shape = (shard.count, self.layout.record_bytes)
            mapped = np.memmap(shard.data_path, dtype=np.uint8, mode="r", shape=shape)
            self._maps[position] = mapped
        return mapped

    def _gather(self, keys: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Copy the records of ``keys`` (all present) into ``(B, *sam_shape)`` and ``(B, *clip_shape)`` tensors."""
        layout = self.layout
        sam = np.empty((len(keys), layout.sam_bytes), dtype=np.uint8)
        clip = np.empty((len(keys), layout.clip_bytes), dtype=np.uint8)
        for i, key in enumerate(keys):
            position, row = self._index[key]
            record = self._map(position)[row]
            sam[i] = record[: layout.sam_bytes]
            clip[i] = record[layout.sam_bytes :]
        return (
            torch.from_numpy(sam).view(layout.torch_dtype).reshape(len(keys), *layout.sam_shape),
            torch.from_numpy(clip).view(layout.torch_dtype).reshape(len(keys), *layout.clip_shape),
        )

    def get(self, key: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(sam (*sam_shape), clip (*clip_shape))`` of ``key`` in the layout dtype, as fresh CPU tensors."""
        if key not in self._index:
            raise KeyError(f"feature cache {self.root} has no entry for key {key}")
        sam, clip = self._gather([key])
        return sam[0], clip[0]

    def get_batch(self, keys: list[str]) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Stacked ``(B, *sam_shape)`` and ``(B, *clip_shape)`` in ``keys`` order, or None if any key is missing."""
        if any(key not in self._index for key in keys):
            return None
        return self._gather(keys)

    def check_layout(self, expected: FeatureLayout) -> None:
        """Raise ValueError unless this cache was built for ``expected``."""
        if self.layout != expected:
            raise ValueError(
                f"feature cache {self.root} does not match the current encoders: "
                f"{_layout_differences(self.layout, expected)}. Rerun {PRECOMPUTE_SCRIPT} into a new directory "
                "or unset data.feature_cache."
            )

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_maps"] = {}
        return state
