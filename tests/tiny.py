"""The `tiny` preset (openblip3o/presets.py) with per-test overrides, for fast training tests."""

from openblip3o.config import merge
from openblip3o.presets import get_preset


def tiny_config(**overrides):
    config = get_preset("tiny")
    return merge(config, overrides) if overrides else config
