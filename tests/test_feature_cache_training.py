"""Frozen-encoder feature cache in training: precompute fills it, training reads it with the same
losses and without running the encoders, a cache for other encoder weights is refused."""

import json
import subprocess
import sys

import pytest
import torch

from gsva.data.samples import Collator
from gsva.bench.host_syncs import HostSyncCounter
from gsva.engine.precompute import all_training_images, precompute_features
from gsva.engine.trainer import open_feature_cache, train
from gsva.feature_cache import FeatureCache
from gsva.pipeline import build_pipeline
from gsva.model.encoder_features import encoder_layout
from tests.conftest import REPO, TINY_CONFIG, child_environment, run_script, seeded_pipeline, tiny_config


@pytest.fixture(scope="module")
def cache_setup(synthetic_root, tokenizer_dir, tmp_path_factory):
    """The tiny config, its model and builder, and a cache of all its training images."""
    cfg = tiny_config(synthetic_root, tokenizer_dir, "data.num_workers=0")
    pipeline = seeded_pipeline(cfg)
    model, builder = pipeline.model, pipeline.builder
    cache_dir = tmp_path_factory.mktemp("cache") / "features"
    first = precompute_features(model.eval(), builder, cfg, cache_dir, torch.device("cpu"), batch_size=5, num_workers=0)
    return cfg, model, builder, cache_dir, first


def test_precompute_covers_every_training_image_once_and_resumes(cache_setup):
    cfg, model, builder, cache_dir, first = cache_setup
    images = len(all_training_images(cfg, builder))
    assert first.images == images and first.encoded == images and first.already_cached == 0
    cache = FeatureCache.open(cache_dir)
    assert len(cache) == images
    again = precompute_features(model, builder, cfg, cache_dir, torch.device("cpu"), batch_size=5, num_workers=0)
    assert again.encoded == 0 and again.already_cached == images
    assert len(FeatureCache.open(cache_dir)) == images


def test_cached_batches_give_the_losses_of_the_encoders_without_running_them(cache_setup):
    cfg, model, builder, cache_dir, _ = cache_setup
    model.train()
    cache = FeatureCache.open(cache_dir)
    stream = all_training_images(cfg, builder)
    plain, cached = Collator(builder.pad_token_id, cfg.data.sam_image_size), Collator(builder.pad_token_id, cfg.data.sam_image_size, cache)
    calls = []
    hooks = [
        model.visual_model.image_encoder.register_forward_hook(lambda *args: calls.append("sam")),
        model.mllm.vision_tower.register_forward_hook(lambda *args: calls.append("clip")),
    ]
    try:
        for first in (0, 3, 7):
            samples = [stream[(0, position)] for position in (first, first + 1)]
            expected = model(plain(samples))
            assert calls == ["sam", "clip"]
            calls.clear()
            batch = cached(samples)
            assert batch.sam_features is not None and batch.clip_features is not None
            losses = model(batch)
            assert calls == []
            for name in ("total", "ce", "bce", "dice"):
                assert torch.allclose(getattr(losses, name), getattr(expected, name), rtol=1e-5, atol=1e-6), name
    finally:
        for hook in hooks:
            hook.remove()
    # A batch with an image the cache does not hold is encoded by the model.
    other = samples[0]
    other.sam_image = other.sam_image.flip(-1)
    assert cached([other]).sam_features is None


def test_training_forward_reads_nothing_back_from_the_device(cache_setup):
    cfg, model, builder, cache_dir, _ = cache_setup
    stream = all_training_images(cfg, builder)
    batch = Collator(builder.pad_token_id, cfg.data.sam_image_size)([stream[(0, 0)], stream[(0, 1)]])
    with HostSyncCounter() as counter:
        model(batch).total.backward()
    assert not counter.from_files_under(REPO / "gsva"), counter.from_files_under(REPO / "gsva")
    # The counter does see read-backs (here: the inference protocol's own).
    with HostSyncCounter() as counter:
        model.predict_teacher_forced(batch)
    assert counter.from_files_under(REPO / "gsva")


def test_cache_of_other_encoder_weights_is_refused(cache_setup, synthetic_root, tokenizer_dir):
    _, _, _, cache_dir, _ = cache_setup
    other_cfg = tiny_config(synthetic_root, tokenizer_dir, "run.seed=7", f"data.feature_cache={cache_dir}")
    other_model = build_pipeline(other_cfg).model
    assert encoder_layout(other_model, other_cfg.data.clip_image_size).fingerprint != FeatureCache.open(cache_dir).layout.fingerprint
    with pytest.raises(ValueError, match="precompute_features"):
        open_feature_cache(other_cfg, other_model)


@pytest.mark.slow
def test_training_from_the_cache_matches_training_without_it(synthetic_root, tokenizer_dir, tmp_path, capsys):
    overrides = ("schedule.steps=4", "run.log_every=1", "eval.at_end=false", "data.num_workers=0", "optim.micro_batch_size=2")
    arguments = [
        "--config", str(TINY_CONFIG), "--out", str(tmp_path / "cache"), "--num-workers", "0", "--batch-size", "4",
        f"data.dataset_dir={synthetic_root}", "data.synthetic=null", f"model.tokenizer_path={tokenizer_dir}",
        "components.enabled=false",
    ]
    assert run_script("precompute_features", arguments) == 0
    printed = capsys.readouterr().out
    summary = json.loads(printed[printed.index("{\n") : printed.rindex("}") + 1])
    assert summary["encoded"] == summary["images"] > 0
    runs = {}
    for name, extra in (("plain", ()), ("cached", (f"data.feature_cache={tmp_path / 'cache'}",))):
        cfg = tiny_config(synthetic_root, tokenizer_dir, f"run.output_dir={tmp_path / name}", *overrides, *extra)
        runs[name] = train(cfg).history
    assert [record["cached_batch_fraction"] for record in runs["cached"]] == [1.0] * 4
    assert [record["cached_batch_fraction"] for record in runs["plain"]] == [0.0] * 4
    for plain, cached in zip(runs["plain"], runs["cached"]):
        for name in ("total", "ce", "bce", "dice"):
            assert cached[name] == pytest.approx(plain[name], rel=1e-4, abs=1e-6), (plain["step"], name)


@pytest.mark.slow
def test_two_ranks_write_one_shard_each_and_the_same_features(cache_setup, synthetic_root, tokenizer_dir, tmp_path):
    _, _, _, cache_dir, _ = cache_setup
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "scripts/precompute_features.py",
        "--config", "configs/tiny_synthetic.yaml", "--out", str(tmp_path / "cache"), "--num-workers", "0",
        f"data.dataset_dir={synthetic_root}", "data.synthetic=null", f"model.tokenizer_path={tokenizer_dir}",
        "components.enabled=false",
    ]
    done = subprocess.run(command, cwd=REPO, env=child_environment(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(path.name for path in (tmp_path / "cache").glob("*.keys.json")) == [
        "shard-rank0-00000.keys.json", "shard-rank1-00000.keys.json"
    ]
    single, sharded = FeatureCache.open(cache_dir), FeatureCache.open(tmp_path / "cache")
    assert sharded.keys() == single.keys()
    for key in single.keys():
        for ours, theirs in zip(sharded.get(key), single.get(key)):
            assert torch.allclose(ours, theirs, atol=1e-5)
