"""The memory-mapped encoder-feature cache: writing, atomic publishing, reading, keys and fingerprints."""

from __future__ import annotations

import copy
import pickle
import zlib
from pathlib import Path

import pytest
import torch

from gsva.feature_cache import FeatureCache, FeatureCacheWriter, FeatureLayout, image_key, module_fingerprint

SAM_SHAPE = (4, 3, 3)
CLIP_SHAPE = (5, 6)


def make_layout(dtype: str = "float32", fingerprint: str = "encoders-a") -> FeatureLayout:
    return FeatureLayout(fingerprint=fingerprint, sam_shape=SAM_SHAPE, clip_shape=CLIP_SHAPE, dtype=dtype)


def random_entry(layout: FeatureLayout, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    sam = torch.randn(layout.sam_shape, generator=generator).to(layout.torch_dtype)
    clip = torch.randn(layout.clip_shape, generator=generator).to(layout.torch_dtype)
    return sam, clip


def write_entries(
    root: Path, layout: FeatureLayout, writer_name: str, keys: list[str], shard_records: int = 256
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    entries = {key: random_entry(layout, seed=zlib.crc32(key.encode())) for key in keys}
    with FeatureCacheWriter(root, layout, writer_name, shard_records=shard_records) as writer:
        for key, (sam, clip) in entries.items():
            writer.add(key, sam, clip)
    return entries


def shard_names(root: Path, suffix: str) -> list[str]:
    return sorted(path.name for path in root.glob(f"shard-*{suffix}"))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_round_trip_is_exact(tmp_path, dtype):
    layout = make_layout(dtype)
    entries = write_entries(tmp_path, layout, "rank0", [f"k{i}" for i in range(5)])
    cache = FeatureCache.open(tmp_path)
    assert cache.layout == layout
    assert len(cache) == 5
    for key, (sam, clip) in entries.items():
        got_sam, got_clip = cache.get(key)
        assert got_sam.dtype == layout.torch_dtype and got_sam.shape == SAM_SHAPE
        assert got_clip.dtype == layout.torch_dtype and got_clip.shape == CLIP_SHAPE
        assert torch.equal(got_sam, sam) and torch.equal(got_clip, clip)


def test_get_returns_independent_tensors(tmp_path):
    layout = make_layout()
    entries = write_entries(tmp_path, layout, "rank0", ["a"])
    cache = FeatureCache.open(tmp_path)
    sam, _ = cache.get("a")
    sam.zero_()
    assert torch.equal(cache.get("a")[0], entries["a"][0])


def test_get_batch_stacks_in_key_order_and_misses_give_none(tmp_path):
    layout = make_layout("bfloat16")
    entries = write_entries(tmp_path, layout, "rank0", ["a", "b", "c"], shard_records=2)
    cache = FeatureCache.open(tmp_path)
    order = ["c", "a", "b"]
    batch = cache.get_batch(order)
    assert batch is not None
    sam, clip = batch
    assert sam.shape == (3, *SAM_SHAPE) and clip.shape == (3, *CLIP_SHAPE)
    assert torch.equal(sam, torch.stack([entries[key][0] for key in order]))
    assert torch.equal(clip, torch.stack([entries[key][1] for key in order]))
    assert cache.get_batch(["a", "missing"]) is None
    assert "missing" not in cache and "a" in cache
    with pytest.raises(KeyError, match="missing"):
        cache.get("missing")


def test_shards_rotate_at_shard_records(tmp_path):
    layout = make_layout()
    entries = write_entries(tmp_path, layout, "rank0", [f"k{i}" for i in range(5)], shard_records=2)
    assert shard_names(tmp_path, ".keys.json") == [f"shard-rank0-{n:05d}.keys.json" for n in range(3)]
    assert shard_names(tmp_path, ".bin") == [f"shard-rank0-{n:05d}.bin" for n in range(3)]
    assert (tmp_path / "shard-rank0-00002.bin").stat().st_size == layout.record_bytes
    cache = FeatureCache.open(tmp_path)
    assert len(cache) == 5
    assert torch.equal(cache.get("k4")[1], entries["k4"][1])


def test_two_writers_share_a_root(tmp_path):
    layout = make_layout()
    first = FeatureCacheWriter(tmp_path, layout, "rank0", shard_records=2)
    second = FeatureCacheWriter(tmp_path, layout, "rank1", shard_records=2)
    expected = {}
    for i in range(3):
        for writer in (first, second):
            key = f"{writer.writer_name}-{i}"
            expected[key] = random_entry(layout, seed=len(expected))
            writer.add(key, *expected[key])
    first.close()
    second.close()
    cache = FeatureCache.open(tmp_path)
    assert len(cache) == 6
    for key, (sam, clip) in expected.items():
        got_sam, got_clip = cache.get(key)
        assert torch.equal(got_sam, sam) and torch.equal(got_clip, clip)


def test_second_run_with_same_writer_name_keeps_first_run(tmp_path):
    layout = make_layout()
    first = write_entries(tmp_path, layout, "rank0", ["a", "b", "c"], shard_records=2)
    second = write_entries(tmp_path, layout, "rank0", ["d"], shard_records=2)
    assert shard_names(tmp_path, ".keys.json") == [f"shard-rank0-{n:05d}.keys.json" for n in range(3)]
    cache = FeatureCache.open(tmp_path)
    assert len(cache) == 4
    for key, (sam, _) in {**first, **second}.items():
        assert torch.equal(cache.get(key)[0], sam)


def test_duplicate_key_first_shard_wins(tmp_path):
    layout = make_layout()
    first = write_entries(tmp_path, layout, "a", ["dup"])
    with FeatureCacheWriter(tmp_path, layout, "b") as writer:
        writer.add("dup", torch.zeros(SAM_SHAPE), torch.zeros(CLIP_SHAPE))
    cache = FeatureCache.open(tmp_path)
    assert len(cache) == 1
    assert torch.equal(cache.get("dup")[0], first["dup"][0])


def test_crash_inside_writer_publishes_nothing(tmp_path):
    layout = make_layout()
    with pytest.raises(RuntimeError, match="boom"):
        with FeatureCacheWriter(tmp_path, layout, "rank0", shard_records=4) as writer:
            writer.add("a", *random_entry(layout, 0))
            writer.add("b", *random_entry(layout, 1))
            raise RuntimeError("boom")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["manifest.json"]
    assert len(FeatureCache.open(tmp_path)) == 0


def test_readers_ignore_temp_files_and_data_without_keys(tmp_path):
    layout = make_layout()
    entries = write_entries(tmp_path, layout, "rank0", ["a"])
    (tmp_path / ".shard-rank1-0123abcd.bin.tmp").write_bytes(b"\0" * 7)
    (tmp_path / ".shard-rank1-0123abcd.keys.json.tmp").write_text('["b"]')
    (tmp_path / "shard-rank2-00000.bin").write_bytes(b"\0" * (layout.record_bytes + 3))
    cache = FeatureCache.open(tmp_path)
    assert len(cache) == 1 and "b" not in cache
    assert torch.equal(cache.get("a")[0], entries["a"][0])


def test_truncated_data_file_is_reported(tmp_path):
    layout = make_layout()
    write_entries(tmp_path, layout, "rank0", ["a", "b"])
    data = tmp_path / "shard-rank0-00000.bin"
    data.write_bytes(data.read_bytes()[:-10])
    with pytest.raises(ValueError, match="shard-rank0-00000.bin") as error:
        FeatureCache.open(tmp_path)
    assert str(2 * layout.record_bytes) in str(error.value)
    assert str(2 * layout.record_bytes - 10) in str(error.value)


def test_writer_rejects_a_different_layout(tmp_path):
    write_entries(tmp_path, make_layout(fingerprint="encoders-a"), "rank0", ["a"])
    with pytest.raises(ValueError, match="manifest.json") as error:
        FeatureCacheWriter(tmp_path, make_layout(fingerprint="encoders-b"), "rank1")
    assert "encoders-a" in str(error.value) and "encoders-b" in str(error.value)
    with pytest.raises(ValueError, match="bfloat16"):
        FeatureCacheWriter(tmp_path, make_layout("bfloat16", fingerprint="encoders-a"), "rank1")
    FeatureCacheWriter(tmp_path, make_layout(fingerprint="encoders-a"), "rank1").close()


def test_check_layout(tmp_path):
    write_entries(tmp_path, make_layout(fingerprint="encoders-a"), "rank0", ["a"])
    cache = FeatureCache.open(tmp_path)
    cache.check_layout(make_layout(fingerprint="encoders-a"))
    with pytest.raises(ValueError, match="encoders-a") as error:
        cache.check_layout(make_layout(fingerprint="encoders-b"))
    assert "encoders-b" in str(error.value) and str(tmp_path) in str(error.value)
    other_shape = FeatureLayout("encoders-a", sam_shape=(4, 3, 2), clip_shape=CLIP_SHAPE, dtype="float32")
    with pytest.raises(ValueError, match="sam_shape"):
        cache.check_layout(other_shape)


def test_add_rejects_wrong_shape_or_dtype(tmp_path):
    layout = make_layout()
    with FeatureCacheWriter(tmp_path, layout, "rank0") as writer:
        with pytest.raises(ValueError, match=r"sam.*\(4, 3, 2\)"):
            writer.add("a", torch.zeros(4, 3, 2), torch.zeros(CLIP_SHAPE))
        with pytest.raises(ValueError, match="clip.*float16"):
            writer.add("a", torch.zeros(SAM_SHAPE), torch.zeros(CLIP_SHAPE, dtype=torch.float16))


def test_layout_rejects_unknown_dtype():
    with pytest.raises(ValueError, match="float64"):
        make_layout("float64")


def test_open_without_manifest(tmp_path):
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        FeatureCache.open(tmp_path)


def test_pickled_cache_reads_and_refresh_sees_new_shards(tmp_path):
    layout = make_layout("bfloat16")
    entries = write_entries(tmp_path, layout, "rank0", [f"k{i}" for i in range(64)])
    cache = FeatureCache.open(tmp_path)
    assert torch.equal(cache.get("k0")[0], entries["k0"][0])
    pickled = pickle.dumps(cache)
    assert len(pickled) < 64 * layout.record_bytes  # the memory maps are not sent along
    clone = pickle.loads(pickled)
    assert len(clone) == 64
    assert torch.equal(clone.get("k1")[1], entries["k1"][1])

    later = write_entries(tmp_path, layout, "rank1", ["c"])
    assert "c" not in cache
    cache.refresh()
    assert len(cache) == 65
    assert torch.equal(cache.get("c")[0], later["c"][0])
    assert torch.equal(cache.get("k0")[0], entries["k0"][0])


def test_image_key():
    sam = torch.randint(0, 256, (3, 8, 6), dtype=torch.uint8)
    clip = torch.randint(0, 256, (3, 4, 4), dtype=torch.uint8)
    key = image_key(sam, clip)
    assert key == image_key(sam.clone(), clip.clone())
    assert len(key) == 32
    changed = sam.clone()
    changed[1, 2, 3] ^= 1
    assert image_key(changed, clip) != key
    assert image_key(sam.reshape(3, 6, 8), clip) != key
    assert image_key(sam, clip.permute(0, 2, 1)) != key


def test_module_fingerprint():
    torch.manual_seed(0)
    modules = {"sam": torch.nn.Conv2d(3, 4, 3), "clip": torch.nn.Linear(5, 2).to(torch.bfloat16)}
    settings = {"clip_size": 224, "mean": [0.5, 0.5, 0.5]}
    fingerprint = module_fingerprint(modules, settings)
    assert module_fingerprint(copy.deepcopy(modules), dict(settings)) == fingerprint

    for name in modules:
        changed = copy.deepcopy(modules)
        with torch.no_grad():
            changed[name].weight.view(-1)[0] += 1
        assert module_fingerprint(changed, settings) != fingerprint

    assert module_fingerprint(modules, {**settings, "clip_size": 336}) != fingerprint
    assert module_fingerprint({"sam": modules["sam"]}, settings) != fingerprint
