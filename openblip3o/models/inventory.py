"""Parameter counts of every component of a preset, built on the meta device: no weights, no memory."""

from __future__ import annotations

import torch
from transformers import Qwen2_5_VLForConditionalGeneration

from ..config import ModelConfig
from ..presets import EVA_CLIP_WIDTH
from .qwen_setup import qwen_config
from .decoder import build_decoder
from .encoders import build_target_encoder
from .generator import Generator
from .tokenizer import PAD_TOKEN, add_generation_tokens, build_shapes_tokenizer, token_id


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _vocabulary(config: ModelConfig):
    """(tokenizer or vocabulary size for `qwen_config`, vocabulary size, end token id for a mini CLIP text tower)."""
    if config.backbone.tokenizer == "shapes":
        tokenizer = build_shapes_tokenizer()
        add_generation_tokens(tokenizer)
        return tokenizer, len(tokenizer), token_id(tokenizer, PAD_TOKEN)
    vocab = int(config.backbone.text["vocab_size"])
    return vocab, vocab, None


def component_inventory(config: ModelConfig) -> dict:
    """{"components": {name: {"class": str, "parameters": int}}, "total_parameters": int}.

    The backbone, queries and projector make the condition; the generator makes target tokens; the decoder makes
    pixels; the target encoder is used in training only (BLIP3-o does not load it at inference).
    """
    source, vocab, eos = _vocabulary(config)
    qwen = qwen_config(config.backbone, source)
    hidden = qwen.text_config.hidden_size
    components: dict[str, torch.nn.Module | tuple[str, int]] = {}
    skipped: dict[str, str] = {}
    with torch.device("meta"):
        components["backbone"] = Qwen2_5_VLForConditionalGeneration(qwen)
        components["queries"] = ("Parameter", config.backbone.num_queries * hidden)
        components["projector"] = (
            torch.nn.Linear(hidden, hidden) if config.backbone.projector == "linear" else torch.nn.Identity()
        )
        if config.backbone.condition_embeddings:
            components["word_projector"] = torch.nn.Linear(hidden, hidden)
        if config.backbone.condition_state_layer is not None:
            components["state_projector"] = torch.nn.Linear(hidden, hidden)
        try:
            encoder = build_target_encoder(config.target, text_vocab_size=vocab, eos_token_id=eos)
            token_dim, latent_dim = encoder.token_dim, encoder.latent_dim
        except ImportError as error:  # EVA-CLIP needs timm; the encoder is for training only
            encoder, token_dim = None, target_token_dim(config)
            latent_dim = (config.target.principal_components if config.target.kind == "clip" else 0) or token_dim
            skipped["target_encoder"] = str(error)
        components["generator"] = Generator(config.generator, latent_dim, config.target.grid_size, hidden).dit
        decoder = build_decoder(config.decoder, config.target, token_dim)
        if decoder is not None:
            components["decoder.unet"] = decoder.unet
            components["decoder.vae"] = decoder.vae
            components["decoder.condition"] = decoder.condition
        if encoder is not None:
            components["target_encoder"] = encoder
    table = {}
    for name, item in components.items():
        if isinstance(item, tuple):
            table[name] = {"class": item[0], "parameters": item[1]}
        else:
            table[name] = {"class": type(item).__name__, "parameters": _count(item)}
    result = {"components": table, "total_parameters": sum(v["parameters"] for v in table.values())}
    if skipped:
        result["skipped"] = skipped
    return result


def target_token_dim(config: ModelConfig) -> int:
    """The width of a target token, from the configuration alone (EVA-CLIP-E-14-plus: 1792)."""
    if config.target.kind == "clip" and config.target.encoder == "eva_clip":
        return EVA_CLIP_WIDTH
    raise ValueError(f"cannot tell the token width of target {config.target.encoder!r} without building it")
