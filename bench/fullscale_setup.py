"""What both full-scale benchmarks share: the shipped components built at a preset's real sizes with random weights,
directly on the device in their storage dtype (nothing full-size on the host), and the timing helpers.

The models are the package's own classes (`Backbone`, `Generator`, `DiffusionDecoder`, the target encoders), so the
benchmarks time the code the pipeline runs. Only the tokenizer is a stand-in: the mini word-level one with Qwen's
special tokens, since the ids are random anyway.
"""

from __future__ import annotations

import contextlib
import resource
from dataclasses import replace

import torch
from transformers import Qwen2_5_VLForConditionalGeneration

from openblip3o.config import merge
from openblip3o.models.backbone import Backbone
from openblip3o.models.qwen_setup import build_image_processor, qwen_config
from openblip3o.models.decoder import DiffusionDecoder
from openblip3o.models.generator import Generator
from openblip3o.models.inventory import target_token_dim
from openblip3o.models.tokenizer import GEN_QUERY, add_generation_tokens, build_shapes_tokenizer, token_id
from openblip3o.presets import get_preset

GIB = 1024**3
# The tiny preset shaped like the full presets: no projector, no condition norm, no spatial decoder input, every
# target channel; the same code path as a full preset, in seconds on a CPU.
FULL_SHAPE = {"backbone": {"projector": "identity", "condition_norm": "none", "condition_norm_momentum": 0.0},
              "target": {"principal_components": 0}, "decoder": {"spatial_conditioning": False}}


def bench_config(preset: str, tiny: bool):
    return merge(get_preset("tiny"), FULL_SHAPE) if tiny else get_preset(preset)


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype):
    """Build modules directly in `dtype` (no fp32 copy first)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def build_backbone(config, device, dtype, attention: str) -> Backbone:
    """The shipped Backbone around a random Qwen2.5-VL of the preset's size (frozen, `dtype`); queries stay fp32."""
    tokenizer = build_shapes_tokenizer()
    add_generation_tokens(tokenizer)
    # A full preset names Qwen's vocabulary (the random ids span it); the tiny one takes the stand-in tokenizer's.
    vocab = config.backbone.text.get("vocab_size")
    qwen_cfg = qwen_config(config.backbone, tokenizer if vocab is None else int(vocab))
    for sub in (qwen_cfg, qwen_cfg.text_config, qwen_cfg.vision_config):
        sub._attn_implementation = attention
    with torch.device(device), default_dtype(dtype):
        model = Qwen2_5_VLForConditionalGeneration(qwen_cfg)
    model.to(dtype).eval().requires_grad_(False)
    processor = build_image_processor(model.config.vision_config, config.backbone.image_size)
    with torch.device(device):
        return Backbone(config.backbone, model, tokenizer, processor)


def random_prompt_ids(backbone: Backbone, batch: int, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random prompt ids of `seq_len` tokens ending in the N query placeholders, as `Backbone.generation_ids` makes
    them (no padding: every row is full length), and the attention mask."""
    n = backbone.num_queries
    vocab = backbone.model.get_input_embeddings().num_embeddings
    ids = torch.randint(0, vocab, (batch, seq_len), device=backbone.device)
    ids[:, -n:] = token_id(backbone.tokenizer, GEN_QUERY)
    return ids, torch.ones_like(ids)


def generator_channels(config) -> int:
    """Channels per target token (the DiT's input): EVA-CLIP's width at full scale, the tiny CLIP's at tiny size."""
    if config.target.encoder == "eva_clip":
        return target_token_dim(config)
    return config.target.model["vision"]["hidden_size"]  # CLIP's last block width


def build_generator(config, device, condition_dim: int) -> Generator:
    with torch.device(device):  # fp32 master weights (training) or cast by the caller
        return Generator(config.generator, generator_channels(config), config.target.grid_size, condition_dim)


def build_decoder(config, device, dtype) -> DiffusionDecoder:
    with torch.device(device), default_dtype(dtype):
        decoder = DiffusionDecoder.from_config(replace(config.decoder, pretrained_path=None),
                                               generator_channels(config), config.target.grid_size)
    return decoder.to(device, dtype).eval()


def peak_memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / GIB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB  # host RSS (Linux reports KiB)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
