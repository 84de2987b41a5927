import pytest

from gsva.config import ConfigError, check_global_batch, load_config
from gsva.data.catalog import rejection_ablation_datasets
from tests.conftest import TINY_CONFIG


def test_tiny_config_loads_with_overrides():
    cfg = load_config(TINY_CONFIG, ["optim.lr=5e-4", "run.seed=3", "model.lora_target_modules=[q_proj]"])
    assert cfg.optim.lr == 5e-4
    assert cfg.run.seed == 3
    assert cfg.model.lora_target_modules == ["q_proj"]
    assert cfg.data.synthetic.num_images["train"] == 3000


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match=r"unknown key optim\.learning_rate"):
        load_config(TINY_CONFIG, ["optim.learning_rate=1e-4"])


def test_wrong_type_is_named():
    with pytest.raises(ConfigError, match=r"optim\.micro_batch_size: expected int"):
        load_config(TINY_CONFIG, ["optim.micro_batch_size=two"])


def test_choice_lists_allowed_values():
    with pytest.raises(ConfigError, match=r"model\.sam_type: 'vit_x' is not allowed; expected one of"):
        load_config(TINY_CONFIG, ["model.sam_type=vit_x"])


def test_malformed_override():
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(TINY_CONFIG, ["optim.lr"])


def test_published_sam_needs_a_checkpoint():
    with pytest.raises(ConfigError, match="sam_checkpoint is required"):
        load_config(None, ["model.sam_type=vit_h"])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("eval.at_end=maybe", r"eval\.at_end: expected true or false, got 'maybe'"),
        ("optim.global_batch_size=many", r"optim\.global_batch_size: expected int, got 'many'"),
        ("model.lora_target_modules=[q_proj, 3]", r"model\.lora_target_modules\[1\]: expected str, got 3"),
        ("data.tasks={refer_seg: {weight: heavy, datasets: [grefcoco]}}", r"data\.tasks\.refer_seg\.weight: expected float"),
        ("model.tiny=8", r"model\.tiny: expected a mapping of TinyDims fields"),
    ],
)
def test_wrong_types_are_named_at_every_level(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(TINY_CONFIG, [override])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optimizer.lr=1e-4", r"unknown key optimizer; allowed keys here: \['run', 'data'"),
        ("model.tiny.depth=3", r"unknown key model\.tiny\.depth"),
        ("data.tasks={refer_seg: {weight: 1, sets: [grefcoco]}}", r"unknown key data\.tasks\.refer_seg\.sets"),
    ],
)
def test_unknown_keys_are_named_at_every_level(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(TINY_CONFIG, [override])


def test_unknown_key_in_a_yaml_file_is_named(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("base: " + str(TINY_CONFIG) + "\noptim:\n  learning_rate: 1.0e-4\n")
    with pytest.raises(ConfigError, match=r"unknown key optim\.learning_rate"):
        load_config(config)


CLASSIC_ONLY = "data.tasks={refer_seg: {weight: 1, datasets: [refcoco, refcocog]}}"


def test_generalized_data_without_the_rej_token_is_the_ablation_and_is_named():
    """Not refused: without [REJ], absent targets are left out of the prompts (the paper's ablation);
    the trainer names the datasets concerned in a warning."""
    cfg = load_config(TINY_CONFIG, ["model.use_rej_token=false"])
    assert rejection_ablation_datasets(cfg) == ["grefcoco"]
    assert rejection_ablation_datasets(load_config(TINY_CONFIG, [])) == []
    assert rejection_ablation_datasets(load_config(TINY_CONFIG, ["model.use_rej_token=false", CLASSIC_ONLY])) == []


def test_global_batch_must_be_a_multiple_of_one_rank_step():
    cfg = load_config(TINY_CONFIG, ["optim.micro_batch_size=2", "optim.grad_accum_steps=3", "optim.global_batch_size=12"])
    assert cfg.optim.global_batch_size == 12
    for value in (0, -6, 8):
        with pytest.raises(ConfigError, match=rf"optim\.global_batch_size={value} must be a positive multiple of .* = 6"):
            load_config(TINY_CONFIG, ["optim.micro_batch_size=2", "optim.grad_accum_steps=3", f"optim.global_batch_size={value}"])


def test_check_global_batch_at_launch():
    cfg = load_config(TINY_CONFIG, ["optim.micro_batch_size=2", "optim.grad_accum_steps=4", "optim.global_batch_size=16"])
    check_global_batch(cfg, 2)
    with pytest.raises(ConfigError, match=r"global_batch_size=16, but .*\(2\) × .*\(4\) × world size \(4\) = 32; set optim\.grad_accum_steps=2 to fit"):
        check_global_batch(cfg, 4)
    with pytest.raises(ConfigError, match=r"= 24; no whole optim\.grad_accum_steps fits, as 16 is not a multiple of .* = 6"):
        check_global_batch(cfg, 3)
    with pytest.raises(ValueError, match="world_size must be >= 1"):
        check_global_batch(cfg, 0)
    check_global_batch(load_config(TINY_CONFIG), 7)  # no global_batch_size: nothing to check


@pytest.mark.parametrize(
    ("override", "minimum"),
    [
        ("optim.max_consecutive_nonfinite=0", 1),
        ("data.max_bad_samples=-1", 0),
        ("data.prefetch_factor=0", 1),
        ("data.num_workers=-1", 0),
    ],
)
def test_limits_below_their_minimum_are_named(override, minimum):
    key, value = override.split("=")
    with pytest.raises(ConfigError, match=rf"{key} must be >= {minimum}, got {value}"):
        load_config(TINY_CONFIG, [override])


def test_a_lora_finetune_needs_a_rank_and_names_the_other_modes():
    with pytest.raises(ConfigError, match=r"model\.lora_r=-1 with model\.finetune=lora.*model\.finetune=full.*model\.finetune=frozen"):
        load_config(TINY_CONFIG, ["model.finetune=lora", "model.lora_r=-1"])
    assert load_config(TINY_CONFIG, ["model.finetune=frozen", "model.lora_r=0"]).model.finetune == "frozen"
