"""The authors' released weights (GSVA .bin, LISA merged HF dir) import exactly, or not at all.

Tiny checkpoints are written in the real layouts from the released key list
(``tests/fixtures/gsva_released_keys_tiny.json``: every key, shape and dtype of gsva-7b at the tiny
dims, in today's peft naming and in the names of their files).
"""

import json
import pickle
import re
from pathlib import Path

import pytest

import torch

from gsva.config import load_config
from gsva.pipeline import build_pipeline
from gsva.model.released import (
    ReleasedWeightsError,
    mapped_state,
    map_released_state,
    read_released_state,
    released_name,
)
from gsva.model.directory import load_trainable_weights
from tests.conftest import TOKENIZER_FILES, run_script

KEYS_FILE = Path(__file__).parent / "fixtures" / "gsva_released_keys_tiny.json"
BASE_VOCAB = 32000


def _random_tensor(shape: list[int], generator: torch.Generator) -> torch.Tensor:
    return torch.randn(shape, generator=generator) * 0.02


def gsva_state(naming: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """The released gsva .bin at tiny dims; ``naming`` 'key' (peft >= 0.7) or 'key_peft04_tf444' (their files)."""
    generator = torch.Generator().manual_seed(seed)
    entries = json.loads(KEYS_FILE.read_text())["keys"]
    return {entry[naming]: _random_tensor(entry["shape"], generator) for entry in entries}


def lisa_state(seed: int = 1) -> dict[str, torch.Tensor]:
    """LISA's merged model: their names without the peft prefix, no LoRA, 32000 + [SEG] + 2 image tokens."""
    state = {}
    for key, tensor in gsva_state("key_peft04_tf444", seed).items():
        if ".lora_" in key:
            continue
        if key.endswith(("embed_tokens.weight", "lm_head.weight")):
            tensor = tensor[: BASE_VOCAB + 3].clone()
        state[key[len("base_model.model."):]] = tensor
    return state


def write_lisa_dir(directory: Path, state: dict[str, torch.Tensor], llava: Path) -> None:
    """pytorch_model-0000{1,2}-of-00002.bin + pytorch_model.bin.index.json + config.json + tokenizer."""
    directory.mkdir()
    keys = sorted(state)
    shards = {"pytorch_model-00001-of-00002.bin": keys[: len(keys) // 2],
              "pytorch_model-00002-of-00002.bin": keys[len(keys) // 2:]}
    for shard, shard_keys in shards.items():
        torch.save({key: state[key] for key in shard_keys}, directory / shard)
    weight_map = {key: shard for shard, shard_keys in shards.items() for key in shard_keys}
    (directory / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    config = json.loads((llava / "config.json").read_text())
    config.update({"vocab_size": BASE_VOCAB + 3, "out_dim": 256, "train_mask_decoder": True,
                   "architectures": ["LISAForCausalLM"]})
    (directory / "config.json").write_text(json.dumps(config))
    for name in TOKENIZER_FILES:
        if (llava / name).is_file():
            (directory / name).write_bytes((llava / name).read_bytes())


def import_args(fmt: str, weights: Path, released_bases: dict, out: Path) -> list[str]:
    args = ["--format", fmt, "--weights", str(weights), "--vision-tower", str(released_bases["clip"]),
            "--out", str(out), "--config", str(released_bases["yaml"])]
    return args + (["--llava", str(released_bases["llava"])] if fmt == "gsva-bin" else [])


def assert_model_equals_source(out: Path, source: dict[str, torch.Tensor], fmt: str) -> None:
    cfg = load_config(out / "config.yaml")
    model = build_pipeline(cfg).model
    load_trainable_weights(model, out)
    state = model.state_dict()
    placed = set()
    for key, tensor in source.items():
        ours = released_name(key, fmt)
        if ours not in state:
            ours = ours.rpartition(".")[0] + ".base_layer." + ours.rpartition(".")[2]
        assert torch.equal(state[ours], tensor), f"{key} -> {ours}"
        placed.add(ours)
    assert placed == set(state), sorted(set(state) - placed)[:5]


@pytest.mark.parametrize("naming", ["key_peft04_tf444", "key"])
def test_gsva_bin_imports_exactly(released_bases, tmp_path, naming):
    source = gsva_state(naming)
    torch.save(source, tmp_path / "gsva-7b-ft-gres.bin")
    out = tmp_path / "imported"
    assert run_script("import_weights", import_args("gsva-bin", tmp_path / "gsva-7b-ft-gres.bin", released_bases, out)) == 0
    cfg = load_config(out / "config.yaml")
    assert (cfg.model.sam_type, cfg.model.finetune, cfg.model.lora_r, cfg.model.use_rej_token) == ("tiny", "lora", 8, True)
    assert cfg.model.lora_target_modules == ["q_proj", "v_proj"] and cfg.model.precision == "fp32"
    assert_model_equals_source(out, source, "gsva-bin")
    tokenizer = build_pipeline(cfg).tokenizer
    ids = tokenizer.convert_tokens_to_ids(["[SEG]", "[REJ]", "<im_start>", "<im_end>"])
    assert ids == [BASE_VOCAB, BASE_VOCAB + 1, BASE_VOCAB + 2, BASE_VOCAB + 3]


def test_lisa_sharded_dir_imports_exactly_via_the_script(released_bases, tmp_path, capsys):
    source = lisa_state()
    write_lisa_dir(tmp_path / "LISA-7B-v1", source, released_bases["llava"])
    out = tmp_path / "imported"
    assert run_script("import_weights", import_args("lisa-hf", tmp_path / "LISA-7B-v1", released_bases, out)) == 0
    assert "unplaced 0, missing 0, shape mismatches 0" in capsys.readouterr().out
    cfg = load_config(out / "config.yaml")
    assert (cfg.model.finetune, cfg.model.use_rej_token) == ("frozen", False)
    assert_model_equals_source(out, source, "lisa-hf")


def test_missing_misshaped_and_unplaced_keys_are_reported_and_refused(released_bases, tmp_path):
    source = gsva_state("key_peft04_tf444")
    cfg = load_config(released_bases["yaml"])
    model = build_pipeline(cfg).model
    expected = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    assert map_released_state(source, "gsva-bin", expected).ok
    broken = dict(source)
    del broken["base_model.model.model.visual_model.mask_decoder.iou_token.weight"]
    broken["base_model.model.model.mm_projector.weight"] = torch.zeros(3, 3)
    broken["base_model.model.model.extra_head.weight"] = torch.zeros(2)
    broken["base_model.model.model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.zeros(32)
    report = map_released_state(broken, "gsva-bin", expected)
    assert report.missing == ["visual_model.mask_decoder.iou_token.weight"]
    assert report.unplaced == ["base_model.model.model.extra_head.weight"]
    assert [(source_key, ours) for source_key, ours, _, _ in report.shape_mismatches] == [
        ("base_model.model.model.mm_projector.weight", "mllm.mm_projector.weight")]
    assert report.ignored == ["base_model.model.model.layers.0.self_attn.rotary_emb.inv_freq"]
    with pytest.raises(ReleasedWeightsError, match="(?s)extra_head.*iou_token.*mm_projector"):
        mapped_state(broken, report)
    assert map_released_state(source, "gsva-bin", expected).ok

    torch.save(broken, tmp_path / "broken.bin")
    assert run_script("import_weights", import_args("gsva-bin", tmp_path / "broken.bin", released_bases, tmp_path / "out")) == 1
    assert not (tmp_path / "out").exists()


def test_token_rows_must_match_the_tokenizer(released_bases, tmp_path):
    source = gsva_state("key")
    for key in ("base_model.model.model.embed_tokens.weight", "base_model.model.lm_head.weight"):
        source[key] = source[key][: BASE_VOCAB + 3]  # a file without one of the four task tokens
    torch.save(source, tmp_path / "gsva.bin")
    assert run_script("import_weights", import_args("gsva-bin", tmp_path / "gsva.bin", released_bases, tmp_path / "out")) == 1
    assert not (tmp_path / "out").exists()


class _RunsCode:
    def __reduce__(self):
        return (print, ("pickled code ran",))


def test_pickle_with_code_is_refused(tmp_path):
    torch.save({"base_model.model.lm_head.weight": torch.zeros(2), "payload": _RunsCode()}, tmp_path / "evil.bin")
    with pytest.raises(pickle.UnpicklingError, match=rf"{re.escape(str(tmp_path / 'evil.bin'))}.*(builtins\.)?print") as refused:
        read_released_state(tmp_path / "evil.bin", "gsva-bin")
    assert "weights_only=False" not in str(refused.value) and "allowlist" not in str(refused.value)
