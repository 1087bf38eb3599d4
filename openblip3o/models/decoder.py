"""Pixels from target tokens: a `diffusers.UNet2DConditionModel` in the latent space of a `diffusers.AutoencoderKL`.

The tokens (B, G*G, D) condition the UNet two ways: cross-attention (LayerNorm -> Linear to the UNet's
cross_attention_dim, plus a learned position embedding) and, with `spatial_conditioning`, the token grid
(B, D, G, G) -> 1x1 conv -> upsampled to the latent resolution -> concatenated to the UNet input. The mini-scale
measurement found cross-attention alone left objects in the wrong places; the spatial path fixed positions.
Trained with `FlowMatching` (x-prediction by default: it gave clean images where v-prediction left noise).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.utils.torch_utils import randn_tensor
from safetensors.torch import save_file
from torch import nn

from ..config import DecoderConfig, ObjectiveConfig, TargetConfig
from ..objectives import FlowMatching
from .encoders import KL_WEIGHT, TargetEncoder, VAETargetEncoder, kl_reconstruction_loss
from .loading import CheckpointError, check_loading_info, load_state_strict, require_files

PROJECTION_FILE = "condition.safetensors"
CONFIG_FILE = "decoder.json"
SPATIAL_UPSAMPLE_MODE = "nearest"  # each latent cell sees exactly the token of its grid cell
SDXL_TIME_IDS = 6  # (original H, W), (crop top, left), (target H, W)
DEFAULT_OBJECTIVE = ObjectiveConfig(name="flow_matching", prediction="sample", condition_dropout=0.1)
# The token-noise level (target units, ~0-2) enters the UNet as diffusers' upscaler feeds its noise level: as class
# labels of class_embed_type "timestep" (sinusoids, then an MLP added to the time embedding), scaled to timestep range.
LEVEL_EMBED_TYPE = "timestep"
LEVEL_EMBED_SCALE = 500.0


class ConditionProjector(nn.Module):
    """Tokens (B, N, D) -> cross-attention states (B, N, C), pooled states (B, C), spatial map (B, S, G, G).

    "learned": LayerNorm -> Linear + position embedding. "identity": the raw tokens (a pretrained decoder that was
    trained on them, e.g. Emu2-Gen's SDXL UNet on EVA-CLIP features).
    """

    def __init__(self, token_dim: int, num_tokens: int, cross_dim: int, spatial_channels: int, mode: str = "learned"):
        super().__init__()
        if mode not in ("learned", "identity"):
            raise ValueError(f"condition projection {mode!r} is not 'learned' or 'identity'")
        if mode == "identity" and token_dim != cross_dim:
            raise ValueError(f"identity projection needs token_dim {token_dim} == cross_attention_dim {cross_dim}")
        self.mode, self.grid = mode, math.isqrt(num_tokens)
        if self.grid**2 != num_tokens:
            raise ValueError(f"{num_tokens} tokens do not form a square grid")
        if mode == "learned":
            self.norm = nn.LayerNorm(token_dim)
            self.proj = nn.Linear(token_dim, cross_dim)
            self.position = nn.Parameter(torch.randn(1, num_tokens, cross_dim) * 0.02)
        self.spatial = nn.Conv2d(token_dim, spatial_channels, kernel_size=1) if spatial_channels else None

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        normed = self.norm(tokens) if self.mode == "learned" else tokens
        projected = self.proj(normed) if self.mode == "learned" else normed
        pooled = projected.mean(dim=1)  # SDXL's pooled "text" embedding (Emu2-Gen: the mean of the features)
        states = projected + self.position if self.mode == "learned" else projected
        spatial = None
        if self.spatial is not None:
            b, _, d = normed.shape
            spatial = self.spatial(normed.transpose(1, 2).reshape(b, d, self.grid, self.grid))
        return states, pooled, spatial


class DiffusionDecoder(nn.Module):
    """`forward(x_t, timestep, tokens, mask) -> prediction` is the objective's network; `loss` / `decode` wrap it."""

    def __init__(self, cfg: DecoderConfig, token_dim: int, grid_size: int, objective: ObjectiveConfig | None = None,
                 projection: str = "learned", unet: UNet2DConditionModel | None = None,
                 vae: AutoencoderKL | None = None):
        super().__init__()
        self.cfg, self.token_dim, self.grid_size = cfg, token_dim, grid_size
        self.objective_config = objective or DEFAULT_OBJECTIVE
        if self.objective_config.name != "flow_matching":
            raise ValueError(f"the decoder trains with flow matching, not {self.objective_config.name!r}")
        self.objective = FlowMatching(self.objective_config)
        self.vae = vae if vae is not None else AutoencoderKL(**cfg.vae)
        self.vae.requires_grad_(False)  # trained apart (vae_loss), frozen while the UNet trains
        self.factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        if cfg.image_size % self.factor:
            raise ValueError(f"decoder.image_size {cfg.image_size} is not divisible by the VAE factor {self.factor}")
        self.latent_size, self.latent_channels = cfg.image_size // self.factor, self.vae.config.latent_channels
        spatial = cfg.spatial_channels if cfg.spatial_conditioning else 0
        self.unet = unet if unet is not None else UNet2DConditionModel(**self._unet_kwargs(cfg, spatial))
        expected = {"in_channels": self.latent_channels + spatial, "out_channels": self.latent_channels,
                    "class_embed_type": LEVEL_EMBED_TYPE if cfg.level_conditioning else None}
        wrong = {k: (self.unet.config[k], v) for k, v in expected.items() if self.unet.config[k] != v}
        if wrong:
            raise ValueError(f"decoder.unet channels (given, needed): {wrong}")
        self.condition = ConditionProjector(token_dim, grid_size**2, self.unet.config.cross_attention_dim, spatial,
                                            projection)
        self.text_time = self.unet.config.addition_embed_type == "text_time"
        if self.text_time:
            pooled_dim = (self.unet.config.projection_class_embeddings_input_dim
                          - SDXL_TIME_IDS * self.unet.config.addition_time_embed_dim)
            if pooled_dim != self.unet.config.cross_attention_dim:
                raise ValueError(f"decoder.unet: the pooled embedding ({pooled_dim}) must be cross_attention_dim wide")

    def _unet_kwargs(self, cfg: DecoderConfig, spatial: int) -> dict:
        derived = {"in_channels": self.latent_channels + spatial, "out_channels": self.latent_channels,
                   "sample_size": self.latent_size}
        if cfg.level_conditioning:
            derived["class_embed_type"] = LEVEL_EMBED_TYPE
        clash = {k: (cfg.unet[k], v) for k, v in derived.items() if k in cfg.unet and cfg.unet[k] != v}
        if clash:
            raise ValueError(f"decoder.unet values (given, derived) disagree: {clash}")
        return {**cfg.unet, **derived}

    @property
    def level_conditioning(self) -> bool:
        return self.cfg.level_conditioning

    @torch.no_grad()
    def add_level_conditioning(self) -> None:
        """Give a decoder trained without levels the level input, zero-initialised where it joins the time embedding,
        so it draws exactly as before until fine-tuning. The UNet is rebuilt from its config with the class embedding
        and its weights copied over; `cfg.level_conditioning` is set in place, so the model's config (the same
        object, saved with the pipeline) says so too."""
        if self.level_conditioning:
            raise ValueError("this decoder already reads the token-noise level")
        unet = UNet2DConditionModel.from_config(self.unet.config, class_embed_type=LEVEL_EMBED_TYPE)
        missing, unexpected = unet.load_state_dict(self.unet.state_dict(), strict=False)
        if unexpected or any(not k.startswith("class_embedding.") for k in missing):
            raise RuntimeError(f"rebuilding the UNet lost weights: missing {missing}, unexpected {unexpected}")
        nn.init.zeros_(unet.class_embedding.linear_2.weight)
        nn.init.zeros_(unet.class_embedding.linear_2.bias)
        self.unet = unet.to(next(self.unet.parameters()))
        self.cfg.level_conditioning = True  # in place: the model's config (saved with the pipeline) is this object

    def forward(self, x_t: torch.Tensor, timestep: torch.Tensor, tokens: torch.Tensor,
                mask: torch.Tensor | None = None, level: float | torch.Tensor | None = None) -> torch.Tensor:
        """x_t (B, C, h, w) latents; timestep (B,); tokens (B, G*G, D) -> prediction (B, C, h, w).
        level: the tokens' noise level, a number or (B,), for a decoder with level conditioning."""
        labels = None
        if self.level_conditioning:
            if level is None:
                raise ValueError("this decoder is conditioned on the token-noise level: pass one (0 = exact tokens)")
            labels = torch.as_tensor(level, dtype=torch.float32, device=x_t.device).expand(x_t.shape[0])
            labels = labels * LEVEL_EMBED_SCALE
        states, pooled, spatial = self.condition(tokens.to(x_t.dtype))
        if spatial is not None:
            spatial = F.interpolate(spatial, size=x_t.shape[-2:], mode=SPATIAL_UPSAMPLE_MODE)
            x_t = torch.cat([x_t, spatial], dim=1)
        added = None
        if self.text_time:
            size = self.cfg.image_size
            time_ids = torch.tensor([size, size, 0, 0, size, size], dtype=x_t.dtype, device=x_t.device)
            added = {"text_embeds": pooled, "time_ids": time_ids.expand(x_t.shape[0], -1)}
        return self.unet(x_t, timestep, encoder_hidden_states=states, class_labels=labels, added_cond_kwargs=added,
                         return_dict=False)[0]

    @torch.no_grad()
    def encode_latents(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> (B, C, h, w) scaled latents (posterior mean: a deterministic target)."""
        return self.vae.encode(images * 2 - 1).latent_dist.mean * self.vae.config.scaling_factor

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        return ((self.vae.decode(latents / self.vae.config.scaling_factor).sample + 1) / 2).clamp(0, 1)

    def _network(self, level: float | torch.Tensor | None):
        """The objective's `network(x_t, t, cond, mask)`, with the level bound for a decoder that reads one
        (`forward` refuses a missing one)."""
        if not self.level_conditioning:
            return self
        return lambda x_t, timestep, tokens, mask: self(x_t, timestep, tokens, mask, level)

    def loss(self, images: torch.Tensor, tokens: torch.Tensor, generator: torch.Generator | None = None,
             level: torch.Tensor | None = None) -> torch.Tensor:
        """Flow-matching loss of the UNet on the images' latents, conditioned on their tokens (B, G*G, D) and, with
        level conditioning, on the (B,) noise levels they were augmented with."""
        return self.objective.loss(self._network(level), self.encode_latents(images), tokens, None, generator)

    def vae_loss(self, images: torch.Tensor, kl_weight: float = KL_WEIGHT) -> torch.Tensor:
        """Train the VAE first (call `vae.requires_grad_(True)`): KL-regularised reconstruction of [0, 1] images."""
        return kl_reconstruction_loss(self.vae, images, kl_weight)

    @torch.no_grad()
    def fit_latent_scale(self, images: torch.Tensor) -> float:
        """Set the VAE's scaling_factor so the latents of `images` have unit std (as SD did); returns it."""
        latents = self.vae.encode(images * 2 - 1).latent_dist.mean
        scale = float(1.0 / latents.float().std().clamp_min(1e-6))
        self.vae.register_to_config(scaling_factor=scale)
        return scale

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor, uncond_tokens: torch.Tensor | None = None, num_inference_steps: int = 50,
               guidance_scale: float = 3.0, generator: torch.Generator | list[torch.Generator] | None = None,
               progress: bool = False, level: float = 0.0, **sampler_options) -> torch.Tensor:
        """tokens (B, G*G, D) -> images (B, 3, H, W) in [0, 1]. uncond None = zero tokens (the dropped condition of
        training); guidance 1.0 runs the conditional branch only. A list of generators gives each image its own
        noise, so a batch decodes exactly as its images one at a time. level: how rough the tokens are, for a decoder
        with level conditioning (0 = exact tokens of an image; ignored without). `sampler_options` go to
        `FlowMatching.sample` (solver, guided_fraction, batched_guidance)."""
        shape = (tokens.shape[0], self.latent_channels, self.latent_size, self.latent_size)
        dtype = next(self.unet.parameters()).dtype
        noise = randn_tensor(shape, generator=generator, device=tokens.device, dtype=dtype)
        latents = self.objective.sample(self._network(level), noise, tokens.to(dtype), None,
                                        None if uncond_tokens is None else uncond_tokens.to(dtype), None,
                                        num_inference_steps, guidance_scale, progress, **sampler_options)
        return self.decode_latents(latents)

    def config_dict(self) -> dict:
        return {"token_dim": self.token_dim, "grid_size": self.grid_size, "image_size": self.cfg.image_size,
                "spatial_conditioning": self.cfg.spatial_conditioning, "spatial_channels": self.cfg.spatial_channels,
                "projection": self.condition.mode, "objective": asdict(self.objective_config),
                "level_conditioning": self.level_conditioning}

    def save_pretrained(self, directory: str | Path) -> None:
        """unet/ and vae/ (diffusers, safetensors), condition.safetensors, decoder.json."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.unet.save_pretrained(directory / "unet", safe_serialization=True)
        self.vae.save_pretrained(directory / "vae", safe_serialization=True)
        save_file({k: v.detach().contiguous().cpu() for k, v in self.condition.state_dict().items()},
                  str(directory / PROJECTION_FILE))
        (directory / CONFIG_FILE).write_text(json.dumps(self.config_dict(), indent=2), encoding="utf-8")

    @classmethod
    def from_pretrained(cls, directory: str | Path, cfg: DecoderConfig) -> DiffusionDecoder:
        """Strict: every file present, every weight loaded, and `cfg`'s architecture fields equal the saved ones."""
        directory = Path(directory)
        require_files(directory, [CONFIG_FILE, PROJECTION_FILE, "unet/config.json", "vae/config.json"], "decoder")
        saved = json.loads((directory / CONFIG_FILE).read_text(encoding="utf-8"))
        saved.setdefault("level_conditioning", False)  # decoders saved before the option
        differ = {k: (getattr(cfg, k), saved[k])
                  for k in ("image_size", "spatial_conditioning", "spatial_channels", "level_conditioning")
                  if getattr(cfg, k) != saved[k] and (k != "spatial_channels" or cfg.spatial_conditioning)}
        if differ:
            raise CheckpointError(f"decoder: config (given, saved) differs from {directory}: {differ}")
        unet, vae = _load_diffusers(directory)
        module = cls(cfg, saved["token_dim"], saved["grid_size"], ObjectiveConfig(**saved["objective"]),
                     saved["projection"], unet=unet, vae=vae)
        load_state_strict(module.condition, directory / PROJECTION_FILE, "decoder")
        return module.eval()

    @classmethod
    def from_config(cls, cfg: DecoderConfig, token_dim: int, grid_size: int,
                    objective: ObjectiveConfig | None = None) -> DiffusionDecoder:
        """A new decoder, or with `cfg.pretrained_path` one read from a folder: a folder saved by save_pretrained,
        or a bare diffusers unet/ + vae/ pair (then the tokens feed the UNet as they are: identity projection)."""
        if not cfg.pretrained_path:
            return cls(cfg, token_dim, grid_size, objective)
        path = Path(cfg.pretrained_path)
        if (path / CONFIG_FILE).is_file():
            return cls.from_pretrained(path, cfg)
        require_files(path, ["unet/config.json", "vae/config.json"], "decoder")
        unet, vae = _load_diffusers(path)
        return cls(cfg, token_dim, grid_size, objective, "identity", unet=unet, vae=vae)


def _load_diffusers(directory: Path) -> tuple[UNet2DConditionModel, AutoencoderKL]:
    unet, info = UNet2DConditionModel.from_pretrained(directory / "unet", output_loading_info=True,
                                                      low_cpu_mem_usage=False)
    check_loading_info(info, "decoder unet", directory / "unet")
    vae, info = AutoencoderKL.from_pretrained(directory / "vae", output_loading_info=True, low_cpu_mem_usage=False)
    check_loading_info(info, "decoder vae", directory / "vae")
    return unet, vae


def build_decoder(cfg: DecoderConfig, target: TargetConfig, token_dim: int,
                  objective: ObjectiveConfig | None = None) -> DiffusionDecoder | None:
    """The decoder for `target`: none for kind "vae" (its own VAE decodes)."""
    if target.kind == "vae":
        return None
    return DiffusionDecoder.from_config(cfg, token_dim, target.grid_size, objective)


class Autoencoder(nn.Module):
    """A target encoder and its way back to pixels: reconstruct(images) = decode(encode(images))."""

    def __init__(self, encoder: TargetEncoder, decoder: DiffusionDecoder | None = None):
        super().__init__()
        if decoder is None and not isinstance(encoder, VAETargetEncoder):
            raise ValueError("a CLIP-kind target encoder needs a DiffusionDecoder to reach pixels")
        if decoder is not None and (decoder.token_dim, decoder.grid_size) != (encoder.token_dim, encoder.grid_size):
            raise ValueError(f"decoder expects {decoder.grid_size}^2 x {decoder.token_dim} tokens, encoder gives "
                             f"{encoder.grid_size}^2 x {encoder.token_dim}")
        self.encoder, self.decoder = encoder, decoder

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor, num_inference_steps: int = 50, guidance_scale: float = 3.0,
                    generator: torch.Generator | list[torch.Generator] | None = None) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> (B, 3, H', W') in [0, 1]; the VAE kind ignores steps, guidance and generator."""
        tokens = self.encoder.encode(images)
        if self.decoder is None:
            return self.encoder.decode(tokens)
        return self.decoder.decode(tokens, None, num_inference_steps, guidance_scale, generator)
