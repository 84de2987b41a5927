"""The tiny components' stages check their own held-out quality and stop a run that will not learn."""

import re

import pytest

from gsva.demo.components import ComponentPaths, ComponentQualityError, prepare_components
from tests.conftest import COMPONENT_CHECKS, tiny_config


@pytest.mark.parametrize("check", COMPONENT_CHECKS, ids=[check[2] for check in COMPONENT_CHECKS])
def test_a_stage_below_its_floor_stops_with_its_name_and_measurement(synthetic_root, tokenizer_dir, tmp_path, check):
    """Two steps of a stage cannot do its job: that stage stops the run at the check whose floor is
    set (the other checks, with floor 0, pass) and nothing is saved."""
    stage, steps_key, floor_key, measure = check
    overrides = [f"components.{key}=2" for key in dict.fromkeys(steps for _, steps, _, _ in COMPONENT_CHECKS)]  # CLIP has two checks
    overrides += [f"components.{key}={0.6 if key == floor_key else 0.0}" for _, _, key, _ in COMPONENT_CHECKS]
    cfg = tiny_config(
        synthetic_root, tokenizer_dir, "components.enabled=true", f"components.output_dir={tmp_path / 'components'}", *overrides
    )
    with pytest.raises(ComponentQualityError) as error:
        prepare_components(cfg)
    message = str(error.value)
    pattern = rf"pretrain {stage} did not learn enough: held-out {measure} (\d\.\d+) is below the floor 0\.60 \(components\.{floor_key}\)"
    match = re.search(pattern, message)
    assert match is not None, message
    assert float(match.group(1)) < 0.6
    assert f"components.{steps_key}" in message
    assert not ComponentPaths.under(tmp_path / "components").complete("sam")
