import json

import pytest
import yaml

from vla_models import ConfigError, PolicyConfig, preset
from vla_models.presets import PRESETS


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_round_trip_through_yaml_and_json(name, tmp_path):
    config = preset(name)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"policy": config.to_dict()}))
    (tmp_path / "c.json").write_text(json.dumps(config.to_dict()))
    assert PolicyConfig.from_file(tmp_path / "c.yaml") == config
    assert PolicyConfig.from_file(tmp_path / "c.json") == config


@pytest.mark.parametrize(
    "change, words",
    [
        ({"expert.type": "vae"}, ["expert.type", "regression", "diffusion", "flow", "'vae'"]),
        ({"fusion.mode": "sum"}, ["fusion.mode", "cross_attention", "'sum'"]),
        ({"expert.sampler": "euler"}, ["expert.sampler", "ddim", "'euler'"]),
        ({"expert.ddim_steps": 0}, ["expert.ddim_steps", "got 0"]),
        ({"backbone.variant": "llava"}, ["backbone.variant", "qwen2_5_vl", "'llava'"]),
        ({"horizon": -3}, ["horizon", "> 0", "-3"]),
        ({"expert.dropout": 1.5}, ["expert.dropout", "[0, 1)", "1.5"]),
        ({"action_dim": "seven"}, ["action_dim", "integer", "'seven'"]),
    ],
)
def test_invalid_values_name_field_allowed_values_and_what_was_given(change, words):
    with pytest.raises(ConfigError) as info:
        preset("tiny").replace(**change)
    for word in words:
        assert word in str(info.value)


def test_unknown_field_is_rejected_with_the_allowed_names():
    data = preset("cpu").to_dict()
    data["expert"]["num_layers"] = 3
    with pytest.raises(ConfigError, match=r"expert: unknown field\(s\) \['num_layers'\].*'layers'"):
        PolicyConfig.from_dict(data)


def test_policy_without_any_input_is_rejected():
    with pytest.raises(ConfigError, match="no input"):
        PolicyConfig.from_dict({"action_dim": 2})


def test_yaml_is_data_never_code(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("policy: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        PolicyConfig.from_file(path)


def test_action_names_must_match_action_dim():
    with pytest.raises(ConfigError, match="action_names: expected 4 names"):
        preset("cpu").replace(action_names=["x", "y"])


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_shipped_yaml_presets_equal_the_python_presets(name):
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "config" / f"model_{name}.yaml"
    assert PolicyConfig.from_file(path) == preset(name)
