"""Typed configuration: one dataclass per component, a strict loader, and YAML overrides.

Strict means an unknown key or a value of the wrong type is an error naming the key, never a silent default.
Component sizes that follow from other components (the DiT's input channels, its cross-attention width) are
derived in code, not repeated here.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path


class ConfigError(ValueError):
    """A configuration key or value that cannot be used; the message names the key."""


@dataclass
class BackboneConfig:
    """The vision-language backbone (a `transformers` Qwen2.5-VL) and the learnable queries."""

    pretrained_path: str | None = None  # a local Qwen2.5-VL directory; None = build from `text` / `vision`
    text: dict = field(default_factory=dict)  # Qwen2_5_VLTextConfig keyword arguments
    vision: dict = field(default_factory=dict)  # Qwen2_5_VLVisionConfig keyword arguments
    tokenizer: str = "shapes"  # "shapes": the ShapesWorld word-level tokenizer; "pretrained": from pretrained_path
    image_size: int = 64  # understanding input side in pixels (the processor resizes to it)
    max_prompt_tokens: int = 128
    num_queries: int = 64
    projector: str = "linear"  # "linear" | "identity": maps query states to the condition
    # The queries' initial scale: None = BLIP3-o's unscaled randn (norm ~sqrt(hidden), far above trained token
    # embeddings); a float = randn rescaled to that multiple of the token embeddings' standard deviation, so the
    # queries do not drown the prompt they must read.
    query_init_scale: float | None = None
    # "none" | "standardize": standardise the query states per (query, channel) with statistics fitted once on
    # training captions, before the projector. A frozen backbone's query states share most of their value across
    # prompts; this removes the shared part so the DiT sees what differs. BLIP3-o: "none".
    condition_norm: str = "none"
    # With "standardize": after the initial fit the statistics follow the query states as the queries learn, an
    # exponential moving average with this weight per training batch, used in training and inference alike (0 =
    # fixed after the fit). Fixed statistics went stale: 1,500 steps of query training moved the states so far that
    # the "shared" part was 2.1 standard deviations per feature against 0.36 for what differed between prompts.
    condition_norm_momentum: float = 0.0
    # True: the prompt's own input token embeddings (each scaled to unit RMS, through a projection of their own)
    # precede the query states in the condition, so the DiT reads the words directly beside what the frozen
    # language model made of them. BLIP3-o: False (queries only). Measured on the mini backbone, a fresh DiT at 500
    # steps drew 0.44 of 16 colour prompts right with both vs 0.25 from the query states alone (README).
    condition_embeddings: bool = False
    # Where the word part comes from: 0 = the input token embeddings (no context: a prompt and its words rearranged
    # look alike, so the DiT reads a bag of words), k = the states after language layer k, -1 = the final states
    # after the norm. In the causal model a noun's state has read the words before it, so "red" is bound to the
    # "cross" it precedes. Measured on the mini model (2,000 steps from the embedding-conditioned DiT, layer 2):
    # exchanging two objects' colours moved the DiT 0.041 against 0.002, but unseen colour-shape pairs were drawn
    # worse (held-out colours 0.32 against 0.59), so the mini preset keeps 0 (README, "A word part that binds").
    condition_word_layer: int = 0
    # A second word part after the first: the language model's states after this layer (k >= 1, or -1 = final),
    # through a projection of its own (`state_projector`). None = one word part. The embeddings keep the colours of
    # unseen colour-shape pairs, the states bind each colour to its object (see `condition_word_dropout`).
    condition_state_layer: int | None = None
    # Share of training rows whose first word part is zeroed and masked (training only): without it the DiT reads
    # the bag of embeddings and leaves the binding states unused. Measured on the mini model (2,000 steps from the
    # shipped DiT, layer 2, 0.5, then instruct): GenEval 553 x 4 0.312 held-out / 0.368 eval split against the
    # shipped 0.317 / 0.358 (x 1 at seed 0 had said 0.410 / 0.465: a lucky seed), so the mini preset leaves it off.
    condition_word_dropout: float = 0.0
    freeze: bool = True  # generation training keeps the backbone frozen (sequential recipe)
    # "none" | "sincos": a fixed 2-D sin / cos table of each merged vision token's row and column, added to the
    # tower's output (models/vision_position.py). Qwen2.5-VL has rotary positions only, which on a uniform
    # background leave what a lookup reads from an object's tokens without its place; relation questions need it.
    # A pretrained Qwen2.5-VL does without ("none"); the table holds no weights, only this setting.
    vision_position: str = "none"
    vision_position_scale: float = 2.0  # the table's multiplier (unit sin / cos has RMS 0.71)


@dataclass
class GeneratorConfig:
    """`diffusers.LuminaNextDiT2DModel` over the grid of target tokens."""

    patch_size: int = 1
    hidden_size: int = 192
    num_layers: int = 6
    num_attention_heads: int = 6
    num_kv_heads: int = 6
    multiple_of: int = 256
    norm_eps: float = 1e-5
    # Initial value of each block's cross-attention gate (the output is scaled by tanh(gate)). Lumina-Next starts
    # at 0, so the condition reaches the image tokens only once the gates have learned to open.
    cross_attention_gate_init: float = 0.0


@dataclass
class ObjectiveConfig:
    """How the generator is trained and sampled: flow matching, or one-step MSE regression."""

    name: str = "flow_matching"  # "flow_matching" | "mse"
    shift: float = 1.0  # sigma shift: sigma' = shift*sigma / (1 + (shift-1)*sigma)
    condition_dropout: float = 0.1  # the condition is zeroed this often, for classifier-free guidance
    num_train_timesteps: int = 1000  # the network sees sigma * num_train_timesteps
    prediction: str = "velocity"  # "velocity" (eps - x0) | "sample" (x0, converted to a velocity for sampling)


@dataclass
class TargetConfig:
    """What the generator produces: CLIP features pooled to a grid, or VAE latents."""

    kind: str = "clip"  # "clip" | "vae"
    encoder: str = "clip"  # "clip" (transformers CLIP) | "siglip" | "eva_clip" (timm) ; ignored for kind "vae"
    pretrained_path: str | None = None  # local weights of the encoder; None = build from `model`
    model: dict = field(default_factory=dict)  # encoder config keyword arguments (tiny CLIP at mini scale)
    image_size: int = 64  # encoder input side
    grid_size: int = 8  # features are average-pooled to grid_size x grid_size tokens
    # The generator produces the standardised features' top K principal components, lifted back to every channel
    # before the decoder (0 = every channel, BLIP3-o). CLIP-kind targets only (kind "vae" ignores it: its latents are
    # already a few decorrelated channels, and the design-space switch stays one value). See models/principal.py.
    principal_components: int = 0
    # Each principal component scaled to unit variance (models/principal.py); with principal_components only.
    whiten_components: bool = False


@dataclass
class DecoderConfig:
    """Pixels from target tokens: a diffusion UNet in a VAE's latent space (kind "clip"), or the VAE alone."""

    unet: dict = field(default_factory=dict)  # UNet2DConditionModel keyword arguments
    vae: dict = field(default_factory=dict)  # AutoencoderKL keyword arguments
    pretrained_path: str | None = None  # a local folder with unet/ and vae/ (full scale)
    image_size: int = 64
    spatial_conditioning: bool = True  # also feed the token grid, upsampled, as extra input channels
    spatial_channels: int = 16
    uncond: str = "zeros"  # "zeros" | "empty_prompt": the unconditional features for the decoder's own CFG
    num_inference_steps: int = 50
    guidance_scale: float = 3.0
    # The UNet is told how rough its tokens are (Imagen's noise-conditioning augmentation): training noises the tokens
    # at a per-sample level and passes the level in; exact tokens (reconstruction) are decoded at level 0, generated
    # ones at `generated_level` (chosen by measurement). Off: the level is never seen (earlier decoders).
    level_conditioning: bool = False
    generated_level: float = 0.0


@dataclass
class SamplingConfig:
    num_inference_steps: int = 30
    guidance_scale: float = 3.0


@dataclass(frozen=True)
class SamplingSettings:
    """The sampling settings of one generation call, for the DiT and the diffusion decoder; None = the model's default.

    The one shape every entry point carries them in (pipeline, server, CLI, curation, evaluation, benchmarks), and
    `resolved` the one place the defaults are filled in: `ModelConfig.sampling` for the DiT, the `ModelConfig.decoder`
    fields for the decoder (where a saved pipeline stores them). Frozen and hashable: requests with equal settings
    share a batch.
    """

    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    decoder_num_inference_steps: int | None = None
    decoder_guidance_scale: float | None = None
    decoder_level: float | None = None  # the token-noise level a level-conditioned decoder is told (generated tokens)

    def resolved(self, config: ModelConfig) -> SamplingSettings:
        """Every None (and a step count of 0) replaced by the model's default."""
        return SamplingSettings(
            num_inference_steps=self.num_inference_steps or config.sampling.num_inference_steps,
            guidance_scale=config.sampling.guidance_scale if self.guidance_scale is None else self.guidance_scale,
            decoder_num_inference_steps=self.decoder_num_inference_steps or config.decoder.num_inference_steps,
            decoder_guidance_scale=(config.decoder.guidance_scale if self.decoder_guidance_scale is None
                                    else self.decoder_guidance_scale),
            decoder_level=config.decoder.generated_level if self.decoder_level is None else self.decoder_level,
        )

    def as_kwargs(self) -> dict:
        """The `BLIP3oPipeline.__call__` keyword arguments."""
        return dataclasses.asdict(self)


@dataclass
class ModelConfig:
    name: str = "mini"
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    target: TargetConfig = field(default_factory=TargetConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)

    def __post_init__(self):
        check_choice("objective.name", self.objective.name, ("flow_matching", "mse"))
        check_choice("objective.prediction", self.objective.prediction, ("velocity", "sample"))
        check_choice("target.kind", self.target.kind, ("clip", "vae"))
        check_choice("target.encoder", self.target.encoder, ("clip", "siglip", "eva_clip"))
        check_choice("backbone.projector", self.backbone.projector, ("linear", "identity"))
        check_choice("backbone.condition_norm", self.backbone.condition_norm, ("none", "standardize"))
        if not 0.0 <= self.backbone.condition_norm_momentum < 1.0:
            raise ConfigError(f"backbone.condition_norm_momentum must be in [0, 1), got {self.backbone.condition_norm_momentum}")
        check_choice("backbone.tokenizer", self.backbone.tokenizer, ("shapes", "pretrained"))
        check_choice("decoder.uncond", self.decoder.uncond, ("zeros", "empty_prompt"))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def check_choice(key: str, value, choices) -> None:
    if value not in choices:
        raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(repr, choices))}")


def _check_type(key: str, value, annotation):
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        return _check_type(key, value, next(a for a in options if a is not type(None)))
    if dataclasses.is_dataclass(annotation):
        return from_dict(annotation, value, prefix=f"{key}.")
    expected = origin or annotation
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected is tuple and isinstance(value, list):
        return tuple(value)
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        raise ConfigError(f"{key}: expected {getattr(expected, '__name__', expected)}, got {type(value).__name__} {value!r}")
    return value


def from_dict(cls, data: dict, prefix: str = ""):
    """Build dataclass `cls` from a dict, rejecting unknown keys and wrong types."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or cls.__name__}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown key {prefix}{unknown[0]}; known keys: {', '.join(sorted(names))}")
    values = {k: _check_type(prefix + k, v, hints[k]) for k, v in data.items()}
    return cls(**values)


def merge(config, overrides: dict, prefix: str = ""):
    """A copy of dataclass `config` with `overrides` (nested dicts) applied strictly."""
    if not isinstance(overrides, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'overrides'}: expected a mapping")
    current = dataclasses.asdict(config)
    hints = typing.get_type_hints(type(config))
    names = set(current)
    for key, value in overrides.items():
        if key not in names:
            raise ConfigError(f"unknown key {prefix}{key}; known keys: {', '.join(sorted(names))}")
        if dataclasses.is_dataclass(getattr(config, key)) and isinstance(value, dict):
            current[key] = dataclasses.asdict(merge(getattr(config, key), value, prefix=f"{prefix}{key}."))
        else:
            _check_type(prefix + key, value, hints[key])
            current[key] = value
    return from_dict(type(config), current, prefix=prefix)


def load_yaml_overrides(config, path: str | Path):
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such config file")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return merge(config, data)
