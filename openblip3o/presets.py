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
    merge,
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

# Recommended TargetConfig.model at mini scale. CLIP: 64 px, patch 8 -> an 8x8 grid (pooling is the identity);
# width 192 x 4 layers, text 128 x 3: 2.5M parameters; one contrastive AdamW step at batch 128 took 1.0-1.2 s
# on 2 cores (encoding 128 images 0.23 s).
# `text.vocab_size` / `text.eos_token_id` come from the tokenizer (build_target_encoder's arguments).
# "vae" is the kind-"vae" target: f = 8 at 64 px -> an 8x8x4 latent grid (0.98M; 0.49 s per step at batch 32).
MINI_TARGET_MODEL = {
    "vision": {"hidden_size": 192, "intermediate_size": 768, "num_hidden_layers": 4, "num_attention_heads": 6,
               "patch_size": 8},
    "text": {"hidden_size": 128, "intermediate_size": 512, "num_hidden_layers": 3, "num_attention_heads": 4,
             "max_position_embeddings": 64},
    "projection_dim": 128,
    "vae": {"block_out_channels": [16, 32, 64, 64], "down_block_types": ["DownEncoderBlock2D"] * 4,
            "up_block_types": ["UpDecoderBlock2D"] * 4, "layers_per_block": 1, "latent_channels": 4,
            "norm_num_groups": 16},
}

# Recommended DecoderConfig at mini scale (64 px): a f=4 VAE (16x16x4 latents) and a 3.2M-parameter UNet at
# 16/8/4 resolution. One AdamW step at batch 32 on 2 cores: 0.44 s (0.37 s with latents precomputed); wider UNets
# measured 0.58 s (same, 2 layers per block), 0.64 s (48/96/192), 0.85 s (64/128/192), 1.31 s (64/128/192, 2 layers).
# The VAE (0.68M) trains at 0.64 s per step. in_channels / out_channels / sample_size are derived in code.
MINI_DECODER = {
    "unet": {
        "block_out_channels": [32, 64, 128],
        # cross-attention at 16x16 and 8x8; the 4x4 level and the mid block are cheap
        "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
        "layers_per_block": 1,
        "attention_head_dim": 2,  # diffusers' name for the number of heads
        "cross_attention_dim": 128,
        "norm_num_groups": 16,
    },
    "vae": {
        "block_out_channels": [16, 32, 64],
        "down_block_types": ["DownEncoderBlock2D"] * 3,
        "up_block_types": ["UpDecoderBlock2D"] * 3,
        "layers_per_block": 1,
        "latent_channels": 4,
        "norm_num_groups": 16,
    },
    "image_size": 64,
    "spatial_conditioning": True,
    "spatial_channels": 16,
    # The measured spatially conditioned decoder reached 0.94 position / colour with 25 Euler steps, no guidance.
    "num_inference_steps": 25,
    "guidance_scale": 1.0,
}


def mini() -> ModelConfig:
    return ModelConfig(
        name="mini",
        backbone=BackboneConfig(text=dict(MINI_TEXT), vision=dict(MINI_VISION), image_size=64, num_queries=64,
                                query_init_scale=1.0, condition_norm="standardize",
                                condition_norm_momentum=0.01,
                                # The DiT reads the template's token embeddings beside the query states: the frozen
                                # mini LM's states alone gave colour 6/24 (same-seed check), with them 24/24.
                                condition_embeddings=True),
        generator=GeneratorConfig(hidden_size=192, num_layers=6, num_attention_heads=6, num_kv_heads=6,
                                  cross_attention_gate_init=0.5),
        # Timestep shift 3 (training and sampling): more of the training at high noise, where the objects' outlines
        # are decided. Measured, 1500 steps on the same frozen backbone and autoencoder: same-seed colour check by rule
        # 15/24 vs 9/24 at shift 1, held-out mini GenEval 0.085 vs 0.060; per-component whitening did not help.
        objective=ObjectiveConfig(name="flow_matching", shift=3.0, condition_dropout=0.1),
        # The DiT produces the top 32 principal components of the 192 standardised CLIP channels (98 % of their
        # variance; the decoder reconstructs 0.795 fully correct from them vs 0.815 from all 192): measured, its
        # prompt sensitivity grew over training (prompt_swap 0.08 at step 1500) where the full width's fell (0.05).
        target=TargetConfig(kind="clip", encoder="clip", model=copy.deepcopy(MINI_TARGET_MODEL), image_size=64, grid_size=8,
                            principal_components=32),
        # The decoder samples with 25 Euler steps and no guidance at mini scale: on the trained autoencoder (200
        # held-out scenes) that reconstructs as well as the reference 50 steps / CFG 3.0 (fully correct 0.815 vs
        # 0.81) at a quarter of the cost (`openblip3o eval reconstruct --num 200 [--steps 50 --guidance 3]`).
        decoder=DecoderConfig(**copy.deepcopy(MINI_DECODER)),
        sampling=SamplingConfig(num_inference_steps=30, guidance_scale=3.0),
    )


# --- tiny: tests and benchmarks ------------------------------------------------------------------------------

TINY_TEXT = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1, "num_attention_heads": 2,
             "num_key_value_heads": 1,
             # head_dim 32: the multimodal rope's three sections must cover its half, 16
             "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 6, 6]}}
TINY_VISION = {"depth": 1, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "fullatt_block_indexes": [0]}
TINY_CLIP_TOWER = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}
TINY_QUERIES = 8


def tiny() -> ModelConfig:
    """The mini preset shrunk to seconds on a CPU: every real class, one or two layers each. The tests train it and
    the full-scale benchmarks run their code path on it. Not a model anyone should use; no weights ship."""
    base = mini()
    target_model = copy.deepcopy(base.target.model)
    target_model["vision"] |= TINY_CLIP_TOWER
    target_model["text"] |= TINY_CLIP_TOWER
    target_model["projection_dim"] = TINY_CLIP_TOWER["hidden_size"]
    return merge(base, {
        "name": "tiny",
        "backbone": {"text": {**base.backbone.text, **TINY_TEXT}, "vision": {**base.backbone.vision, **TINY_VISION},
                     "num_queries": TINY_QUERIES},
        "generator": {"hidden_size": 64, "num_layers": 2, "num_attention_heads": 4, "num_kv_heads": 4},
        "target": {"model": target_model},
        "decoder": {"unet": {**base.decoder.unet, "block_out_channels": [16, 32, 32], "cross_attention_dim": 32},
                    "vae": {**base.decoder.vae, "block_out_channels": [16, 16, 16]}},
    })


PRESETS: dict[str, Callable[[], ModelConfig]] = {"mini": mini, "blip3o-4b": blip3o_4b, "blip3o-8b": blip3o_8b,
                                                 "tiny": tiny}


def get_preset(name: str) -> ModelConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}")
    return PRESETS[name]()
