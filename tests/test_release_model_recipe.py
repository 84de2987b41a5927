"""The model keys that reproduce the authors' released training: a random frozen image projector
(``model.mm_projector_init``), N(0, 0.02) task-token rows (``model.new_token_init``) and image
markers whatever the LLaVA config says (``model.use_im_start_end``). Defaults keep the LLaVA
checkpoint's projector, mean rows and the LLaVA's own markers.

A tiny LLaVA checkpoint in the original layout (no image markers) stands in for LLaVA-Lightning.
"""

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from gsva.config import ConfigError, load_config
from gsva.model.build import resolve_image_markers
from gsva.model.mllm import build_tiny_llava, save_llava_checkpoint
from gsva.model.directory import load_trainable_weights, save_pretrained, write_config
from gsva.model.released import authors_token_ids
from gsva.pipeline import build_pipeline, from_pretrained
from gsva.text.special_tokens import IMAGE_TOKEN_INDEX
from tests.conftest import TINY_CONFIG, run_script, tiny_config
from tests.test_import_weights import assert_model_equals_source, gsva_state, import_args
from tests.test_model import make_batch

RELEASE_TOKENS = ["[SEG]", "[REJ]", "<im_start>", "<im_end>"]
PROJECTOR = ("mllm.mm_projector.weight", "mllm.mm_projector.bias")


@pytest.fixture(scope="module")
def llava_dir(tmp_path_factory, base_tokenizer) -> Path:
    """A tiny LLaVA (original layout, ``mm_use_im_start_end: false``) at the tiny config's dims."""
    root = tmp_path_factory.mktemp("release_llava")
    tiny = load_config(TINY_CONFIG)
    torch.manual_seed(0)
    llava = build_tiny_llava(tiny.model.tiny, len(base_tokenizer), tiny.data.clip_image_size, False)
    save_llava_checkpoint(llava, root / "llava", root / "clip")
    return root / "llava"


def llava_config(synthetic_root, tokenizer_dir, llava_dir, *overrides):
    return tiny_config(synthetic_root, tokenizer_dir, f"model.llava_path={llava_dir}", *overrides)


def test_defaults_are_the_projects_behaviour():
    model = load_config(TINY_CONFIG).model
    assert (model.mm_projector_init, model.new_token_init, model.use_im_start_end) == ("pretrained", "mean", "auto")


@pytest.mark.parametrize(
    "override, key",
    [
        ("model.mm_projector_init=frozen", "model.mm_projector_init"),
        ("model.new_token_init=zeros", "model.new_token_init"),
        ("model.use_im_start_end=1", "model.use_im_start_end"),
        ("model.use_im_start_end=sometimes", "model.use_im_start_end"),
    ],
)
def test_wrong_values_are_named(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(TINY_CONFIG, [override])


def test_release_values_survive_the_written_config(tmp_path):
    release = ["model.mm_projector_init=random", "model.new_token_init=normal", "model.use_im_start_end=true"]
    write_config(load_config(TINY_CONFIG, release), tmp_path / "config.yaml")
    model = load_config(tmp_path / "config.yaml").model
    assert (model.mm_projector_init, model.new_token_init, model.use_im_start_end) == ("random", "normal", True)


# ----------------------------------------------------------------- model.mm_projector_init
def test_random_projector_replaces_the_checkpoints_and_stays_frozen(synthetic_root, tokenizer_dir, llava_dir):
    checkpoint = load_file(str(llava_dir / "model.safetensors"))
    pretrained = build_pipeline(llava_config(synthetic_root, tokenizer_dir, llava_dir)).model
    redrawn = build_pipeline(llava_config(synthetic_root, tokenizer_dir, llava_dir, "model.mm_projector_init=random")).model
    assert torch.equal(pretrained.mllm.mm_projector.weight, checkpoint["model.mm_projector.weight"])
    assert not pretrained.frozen_in_weights and redrawn.frozen_in_weights == set(PROJECTOR)

    projector = redrawn.mllm.mm_projector
    assert not torch.allclose(projector.weight, checkpoint["model.mm_projector.weight"])
    assert not any(parameter.requires_grad for parameter in projector.parameters())
    bound = projector.in_features**-0.5  # nn.Linear's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    assert projector.weight.abs().max() <= bound and projector.bias.abs().max() <= bound
    assert projector.weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05)
    others = {name: tensor for name, tensor in pretrained.state_dict().items() if name not in PROJECTOR}
    assert all(torch.equal(tensor, redrawn.state_dict()[name]) for name, tensor in others.items())


def test_random_projector_survives_training_saving_and_loading(synthetic_root, tokenizer_dir, llava_dir, tmp_path):
    cfg = llava_config(synthetic_root, tokenizer_dir, llava_dir, "model.mm_projector_init=random")
    pipeline = build_pipeline(cfg)
    model = pipeline.model
    drawn = model.mllm.mm_projector.weight.detach().clone()
    batch, _ = make_batch(cfg, pipeline.tokenizer, pipeline.builder.prompts)
    optimizer = torch.optim.SGD([parameter for parameter in model.parameters() if parameter.requires_grad], lr=0.1)
    model(batch).total.backward()
    optimizer.step()
    assert torch.equal(model.mllm.mm_projector.weight, drawn)

    save_pretrained(model, cfg, tmp_path / "final")
    assert set(PROJECTOR) <= set(load_file(str(tmp_path / "final" / "model.safetensors")))
    loaded = from_pretrained(tmp_path / "final").model.state_dict()
    assert all(torch.equal(tensor, loaded[name]) for name, tensor in model.state_dict().items())
    reseeded = from_pretrained(tmp_path / "final", ["run.seed=7"]).model
    assert torch.equal(reseeded.mllm.mm_projector.weight, drawn)  # the file's projector, not a new draw


def test_weights_file_projector_wins_and_travels_on(synthetic_root, tokenizer_dir, llava_dir, tmp_path):
    release = llava_config(synthetic_root, tokenizer_dir, llava_dir, "model.mm_projector_init=random")
    release_model = build_pipeline(release).model
    save_pretrained(release_model, release, tmp_path / "pretrained_run")

    default = llava_config(synthetic_root, tokenizer_dir, llava_dir)
    finetuned = build_pipeline(default).model
    load_trainable_weights(finetuned, tmp_path / "pretrained_run")
    assert torch.equal(finetuned.mllm.mm_projector.weight, release_model.mllm.mm_projector.weight)
    save_pretrained(finetuned, default, tmp_path / "finetuned")
    reloaded = from_pretrained(tmp_path / "finetuned").model
    assert torch.equal(reloaded.mllm.mm_projector.weight, release_model.mllm.mm_projector.weight)

    save_pretrained(build_pipeline(default).model, default, tmp_path / "without_projector")
    with pytest.raises(ValueError, match="mllm.mm_projector"):
        load_trainable_weights(build_pipeline(release).model, tmp_path / "without_projector")


# ----------------------------------------------------------------- model.new_token_init
@pytest.mark.parametrize("new_token_init", ["mean", "normal"])
def test_new_token_rows(synthetic_root, tokenizer_dir, llava_dir, new_token_init):
    checkpoint = load_file(str(llava_dir / "model.safetensors"))
    cfg = llava_config(synthetic_root, tokenizer_dir, llava_dir, f"model.new_token_init={new_token_init}",
                       "model.use_im_start_end=true")
    language_model = build_pipeline(cfg).model.mllm.language_model
    tables = {"model.embed_tokens.weight": language_model.get_input_embeddings().weight,
              "lm_head.weight": language_model.get_output_embeddings().weight}
    for key, table in tables.items():
        old = checkpoint[key]
        assert table.shape[0] == old.shape[0] + len(RELEASE_TOKENS)
        assert torch.equal(table[: old.shape[0]], old), key
        new = table[old.shape[0]:].detach()
        if new_token_init == "mean":
            assert torch.allclose(new, old.mean(0).expand_as(new), atol=1e-3), key
        else:
            assert new.std().item() == pytest.approx(0.02, rel=0.1), key
            assert abs(new.mean().item()) < 0.003, key
            assert (new[0] - new[1]).abs().max() > 0.02, key  # independent draws, not one shared row


# ----------------------------------------------------------------- model.use_im_start_end
def test_true_wraps_the_image_and_adds_the_markers_in_the_released_order(synthetic_root, tokenizer_dir, base_tokenizer, llava_dir):
    cfg = llava_config(synthetic_root, tokenizer_dir, llava_dir, "model.use_im_start_end=true")
    assert json.loads((llava_dir / "config.json").read_text())["mm_use_im_start_end"] is False
    pipeline = build_pipeline(cfg)
    base_vocab = base_tokenizer.get_vocab()
    ids = pipeline.tokenizer.convert_tokens_to_ids(RELEASE_TOKENS)
    assert ids == list(range(len(base_vocab), len(base_vocab) + 4))
    assert ids == [authors_token_ids(base_vocab, RELEASE_TOKENS)[token] for token in RELEASE_TOKENS]
    assert pipeline.model.mllm.use_im_start_end and pipeline.model.mllm.llava_config()["mm_use_im_start_end"]
    assert pipeline.model.mllm.language_model.get_input_embeddings().num_embeddings == len(pipeline.tokenizer)

    batch, _ = make_batch(cfg, pipeline.tokenizer, pipeline.builder.prompts)
    for row in batch.input_ids:
        image = int((row == IMAGE_TOKEN_INDEX).nonzero())
        assert row[image - 1].item() == ids[2] and row[image + 1].item() == ids[3]


def test_false_and_auto(synthetic_root, tokenizer_dir, llava_dir):
    unwrapped = build_pipeline(tiny_config(synthetic_root, tokenizer_dir, "model.tiny.use_im_start_end=true",
                                           "model.use_im_start_end=false"))
    assert "<im_start>" not in unwrapped.tokenizer.get_vocab() and not unwrapped.model.mllm.use_im_start_end
    assert unwrapped.builder.prompts.image_marker == "<image>"
    auto = build_pipeline(llava_config(synthetic_root, tokenizer_dir, llava_dir))
    assert not auto.builder.prompts.use_im_start_end and "<im_start>" not in auto.tokenizer.get_vocab()
    assert resolve_image_markers("auto", {"mm_use_im_start_end": True})
    assert not resolve_image_markers("auto", {"mm_use_im_start_end": True, "text_config": {}, "vision_config": {}})
    assert resolve_image_markers(True, {"text_config": {}, "vision_config": {}})
    assert not resolve_image_markers(False, {"mm_use_im_start_end": True})


# ----------------------------------------------------------------- released-weight import
def test_import_keeps_the_released_projector_and_honours_the_markers_key(released_bases, tmp_path):
    """A release-recipe YAML as the import's base: the imported model keeps the file's projector
    and rows; a LLaVA config without markers still takes the four released task tokens."""
    llava = tmp_path / "llava_without_markers"
    shutil.copytree(released_bases["llava"], llava)
    raw = json.loads((llava / "config.json").read_text())
    (llava / "config.json").write_text(json.dumps({**raw, "mm_use_im_start_end": False}))
    tree = yaml.safe_load(released_bases["yaml"].read_text())
    tree["model"].update({"mm_projector_init": "random", "new_token_init": "normal", "use_im_start_end": True})
    (tmp_path / "release.yaml").write_text(yaml.safe_dump(tree))
    source = gsva_state("key")
    torch.save(source, tmp_path / "gsva.bin")
    paths = {**released_bases, "llava": llava, "yaml": tmp_path / "release.yaml"}

    out = tmp_path / "imported"
    assert run_script("import_weights", import_args("gsva-bin", tmp_path / "gsva.bin", paths, out)) == 0
    model = load_config(out / "config.yaml").model
    assert (model.mm_projector_init, model.use_im_start_end) == ("pretrained", True)
    assert_model_equals_source(out, source, "gsva-bin")
