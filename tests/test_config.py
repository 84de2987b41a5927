import pytest

from gsva.config import ConfigError, load_config
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
