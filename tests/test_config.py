"""Typed configs: strict overrides from dicts and YAML; preset registry."""

import pytest

from openblip3o.config import ConfigError, ModelConfig, from_dict, load_yaml_overrides, merge
from openblip3o.presets import PRESETS, get_preset


def test_overrides_apply_and_reject_unknown_keys_and_wrong_types(tmp_path):
    config = ModelConfig()
    assert merge(config, {"generator": {"num_layers": 2}}).generator.num_layers == 2
    assert merge(config, {"objective": {"shift": 3}}).objective.shift == 3.0  # int accepted where float is
    with pytest.raises(ConfigError, match="unknown key generator.num_layer;"):
        merge(config, {"generator": {"num_layer": 2}})
    with pytest.raises(ConfigError, match="generator.num_layers: expected int, got str"):
        merge(config, {"generator": {"num_layers": "2"}})
    with pytest.raises(ConfigError, match="objective.name: 'ddpm' is not one of"):
        merge(config, {"objective": {"name": "ddpm"}})
    with pytest.raises(ConfigError, match="expected bool"):
        merge(config, {"backbone": {"freeze": 1}})
    path = tmp_path / "o.yaml"
    path.write_text("target:\n  kind: vae\nsampling:\n  guidance_scale: 4.5\n")
    loaded = load_yaml_overrides(config, path)
    assert loaded.target.kind == "vae" and loaded.sampling.guidance_scale == 4.5


def test_round_trip_through_a_dict():
    for name in PRESETS:
        config = get_preset(name)
        assert from_dict(ModelConfig, config.to_dict()) == config


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ConfigError, match="unknown preset 'huge'; known presets: mini, blip3o-4b, blip3o-8b, tiny"):
        get_preset("huge")
