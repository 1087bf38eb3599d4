"""Preset registry: `mini` (ShapesWorld, trains on a CPU) and the real BLIP3-o sizes `blip3o-4b` / `blip3o-8b`.

Full-scale numbers are the published configurations: Qwen2.5-VL-3B/7B-Instruct (`config.json` of the
releases), BLIP3-o's DiT (24 layers, width 1792, 28 heads, patch 1, 8x8 grid), EVA-CLIP-E-14-plus at 448 px
pooled to 8x8 x 1792, and an SDXL-architecture UNet + VAE decoder (Emu2-Gen's, cross-attending to 1792-d
features). Full-scale weights are always read from local folders given in the `pretrained_path` fields.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

from .config import (
    BackboneConfig,
    ConfigError,
    DecoderConfig,
    GeneratorConfig,
    ModelConfig,
    ObjectiveConfig,
    SamplingConfig,
    TargetConfig,
)

# --- full scale -----------------------------------------------------------------------------------------------

_QWEN_VISION = {
    "depth": 32,
    "hidden_size": 1280,
    "intermediate_size": 3420,
    "num_heads": 16,
    "patch_size": 14,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
    "window_size": 112,
    "fullatt_block_indexes": [7, 15, 23, 31],
    "tokens_per_second": 2,
}
_QWEN_ROPE = {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]}

QWEN25_VL_7B_TEXT = {
    "vocab_size": 152064,
    "hidden_size": 3584,
    "intermediate_size": 18944,
    "num_hidden_layers": 28,
    "num_attention_heads": 28,
    "num_key_value_heads": 4,
    "max_position_embeddings": 128000,
    "rms_norm_eps": 1e-6,
    "rope_parameters": _QWEN_ROPE,
    "tie_word_embeddings": False,
}
QWEN25_VL_3B_TEXT = {
    "vocab_size": 151936,
    "hidden_size": 2048,
    "intermediate_size": 11008,
    "num_hidden_layers": 36,
    "num_attention_heads": 16,
    "num_key_value_heads": 2,
    "max_position_embeddings": 128000,
    "rms_norm_eps": 1e-6,
    "rope_parameters": _QWEN_ROPE,
    "tie_word_embeddings": True,
}

BLIP3O_DIT = GeneratorConfig(patch_size=1, hidden_size=1792, num_layers=24, num_attention_heads=28, num_kv_heads=28)
EVA_CLIP_WIDTH = 1792

SDXL_UNET = {
    "sample_size": 128,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "block_out_channels": [320, 640, 1280],
    "layers_per_block": 2,
    "transformer_layers_per_block": [1, 2, 10],
    "attention_head_dim": [5, 10, 20],
    "cross_attention_dim": EVA_CLIP_WIDTH,
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256,
    # pooled features (1792) + six size/crop ids embedded at 256 each
    "projection_class_embeddings_input_dim": EVA_CLIP_WIDTH + 6 * 256,
}
SDXL_VAE = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "latent_channels": 4,
    "sample_size": 1024,
    "scaling_factor": 0.13025,
}


def _full(name: str, text: dict) -> ModelConfig:
    return ModelConfig(
        name=name,
        backbone=BackboneConfig(
            text=dict(text), vision=dict(_QWEN_VISION), tokenizer="pretrained", image_size=448,
            max_prompt_tokens=512 - 65, num_queries=64, projector="identity",  # BLIP3-o: no projector
        ),
        generator=BLIP3O_DIT,
        # BLIP3-o's scheduler shift is not documented; 1.0 until measured.
        objective=ObjectiveConfig(name="flow_matching", shift=1.0, condition_dropout=0.1),
        target=TargetConfig(kind="clip", encoder="eva_clip", image_size=448, grid_size=8),
        decoder=DecoderConfig(
            unet=dict(SDXL_UNET), vae=dict(SDXL_VAE), image_size=1024, spatial_conditioning=False,
            uncond="empty_prompt", num_inference_steps=50, guidance_scale=3.0,
        ),
        sampling=SamplingConfig(num_inference_steps=30, guidance_scale=3.0),
    )


def blip3o_8b() -> ModelConfig:
    return _full("blip3o-8b", QWEN25_VL_7B_TEXT)


def blip3o_4b() -> ModelConfig:
    return _full("blip3o-4b", QWEN25_VL_3B_TEXT)


# --- mini scale -----------------------------------------------------------------------------------------------

MINI_TEXT = {
    "hidden_size": 256,
    "intermediate_size": 512,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 512,
    "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [8, 12, 12]},
}
MINI_VISION = {
    "depth": 2,
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_heads": 4,
    # Patch 4 (merged 2x2 -> 64 tokens of 8x8 px): at patch 8 each merged token covered 16x16 px of shapes
    # 14-26 px across and held-out shape questions scored 0.26 (chance 1/6).
    "patch_size": 4,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
    "window_size": 64,
    "fullatt_block_indexes": [0, 1],
}


def mini() -> ModelConfig:
    from .models.decoder import MINI_DEFAULTS as DECODER_DEFAULTS
    from .models.encoders import MINI_DEFAULTS as ENCODER_DEFAULTS

    return ModelConfig(
        name="mini",
        backbone=BackboneConfig(text=dict(MINI_TEXT), vision=dict(MINI_VISION), image_size=64, num_queries=64,
                                query_init_scale=1.0, condition_norm="standardize",
                                condition_norm_momentum=0.01),
        generator=GeneratorConfig(hidden_size=192, num_layers=6, num_attention_heads=6, num_kv_heads=6,
                                  cross_attention_gate_init=0.5),
        objective=ObjectiveConfig(name="flow_matching", condition_dropout=0.1),
        # The DiT produces the top 32 principal components of the 192 standardised CLIP channels (98 % of their
        # variance; the decoder reconstructs 0.795 fully correct from them vs 0.815 from all 192): measured, its
        # prompt sensitivity grew over training (prompt_swap 0.08 at step 1500) where the full width's fell (0.05).
        target=TargetConfig(kind="clip", encoder="clip", model=copy.deepcopy(ENCODER_DEFAULTS), image_size=64, grid_size=8,
                            principal_components=32),
        # The decoder samples with 25 Euler steps and no guidance at mini scale: on the trained autoencoder (200
        # held-out scenes) that reconstructs as well as the reference 50 steps / CFG 3.0 (fully correct 0.815 vs
        # 0.81) at a quarter of the cost (`openblip3o eval reconstruct --num 200 [--steps 50 --guidance 3]`).
        decoder=DecoderConfig(**copy.deepcopy(DECODER_DEFAULTS)),
        sampling=SamplingConfig(num_inference_steps=30, guidance_scale=3.0),
    )


PRESETS: dict[str, Callable[[], ModelConfig]] = {"mini": mini, "blip3o-4b": blip3o_4b, "blip3o-8b": blip3o_8b}


def get_preset(name: str) -> ModelConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}")
    return PRESETS[name]()
