"""A tiny configuration of the real classes, for fast training tests."""

import copy

from openblip3o.config import merge
from openblip3o.presets import get_preset


def tiny_config(**overrides):
    base = get_preset("mini")
    text = {**base.backbone.text, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1,
            "num_attention_heads": 2, "num_key_value_heads": 1,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 6, 6]}}
    vision = {**base.backbone.vision, "depth": 1, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2,
              "fullatt_block_indexes": [0]}
    target_model = copy.deepcopy(base.target.model)
    target_model["vision"] |= {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}
    target_model["text"] |= {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}
    target_model["projection_dim"] = 32
    unet = {**base.decoder.unet, "block_out_channels": [16, 32, 32], "cross_attention_dim": 32}
    vae = {**base.decoder.vae, "block_out_channels": [16, 16, 16]}
    config = merge(base, {
        "backbone": {"text": text, "vision": vision, "num_queries": 8},
        "generator": {"hidden_size": 64, "num_layers": 2, "num_attention_heads": 4, "num_kv_heads": 4},
        "target": {"model": target_model},
        "decoder": {"unet": unet, "vae": vae},
    })
    return merge(config, overrides) if overrides else config
