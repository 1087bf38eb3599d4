"""Target encoders: what the generator learns to produce, as (B, G*G, D) tokens on a G x G grid.

Images enter as float tensors (B, 3, H, W) in [0, 1] (`to_tensor` makes them from PIL); each encoder resizes and
normalises internally. CLIP-kind encoders take the last transformer block's output (before any final norm, as
BLIP3-o does), drop the CLS token, and average-pool the patch grid to G x G. The VAE-kind encoder's latent grid
already is G x G. Every encoder saves to and loads from a folder strictly (safetensors + a JSON architecture).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import CLIPConfig, CLIPModel, CLIPVisionConfig, CLIPVisionModel, SiglipVisionConfig, SiglipVisionModel

from ..config import TargetConfig
from ..presets import MINI_TARGET_MODEL
from .loading import CheckpointError, check_loading_info, load_state_strict, require_files
from .principal import PrincipalComponents

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP; EVA-CLIP uses the same
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
SIGLIP_MEAN = SIGLIP_STD = (0.5, 0.5, 0.5)
VAE_MEAN = VAE_STD = (0.5, 0.5, 0.5)  # a VAE works on [-1, 1]
KL_WEIGHT = 1e-6  # LDM's weight on the per-image KL (summed over latent elements): a light regulariser
WEIGHTS_FILE = "target_encoder.safetensors"
CONFIG_FILE = "target_encoder.json"
LEGACY_CLIP_EOS_ID = 2  # CLIPTextModel pools by argmax(input_ids) when eos_token_id == 2: never use it
EVA_CLIP_ARCH = "eva02_enormous_patch14_clip_224"  # timm's EVA-CLIP-E/14(-plus): 1792 wide, 64 deep, post-norm
EVA_UNUSED_PREFIXES = ("norm.", "fc_norm.", "head.")  # final norm and CLIP projection head: not part of the target
MODEL_SECTIONS = {"vision", "text", "projection_dim", "logit_scale_init_value", "vae", "eva"}


def to_tensor(pil_images: Image.Image | list[Image.Image], size: int) -> torch.Tensor:
    """PIL images -> (B, 3, size, size) float32 in [0, 1]: shortest side resized (bicubic), centre-cropped."""
    if isinstance(pil_images, Image.Image):
        pil_images = [pil_images]
    arrays = []
    for image in pil_images:
        image = image.convert("RGB")
        if image.size != (size, size):
            scale = size / min(image.size)
            w, h = max(size, round(image.width * scale)), max(size, round(image.height * scale))
            image = image.resize((w, h), Image.BICUBIC)
            left, top = (w - size) // 2, (h - size) // 2
            image = image.crop((left, top, left + size, top + size))
        arrays.append(np.asarray(image, dtype=np.float32) / 255.0)
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def pool_grid(grid: torch.Tensor, grid_size: int) -> torch.Tensor:
    """(B, D, h, w) -> (B, G*G, D): adaptive average pooling to G x G (the identity when already G x G)."""
    if grid.shape[-2:] != (grid_size, grid_size):
        grid = F.adaptive_avg_pool2d(grid, grid_size)
    return grid.flatten(2).transpose(1, 2)


def kl_reconstruction_loss(vae: AutoencoderKL, images: torch.Tensor, kl_weight: float) -> torch.Tensor:
    """KL-regularised VAE loss: MSE of the reconstruction in [-1, 1] + kl_weight * mean per-image KL."""
    x = images * 2 - 1
    posterior = vae.encode(x).latent_dist
    reconstruction = vae.decode(posterior.sample()).sample
    return F.mse_loss(reconstruction.float(), x.float()) + kl_weight * posterior.kl().mean()


def _check_sections(model: dict, allowed: set[str], what: str) -> None:
    unknown = sorted(set(model) - MODEL_SECTIONS)
    if unknown:
        raise ValueError(f"target.model: unknown section(s) {unknown}; known: {sorted(MODEL_SECTIONS)}")
    if not set(model) & allowed and model:
        raise ValueError(f"target.model has no section for {what} (expected one of {sorted(allowed)})")


class TargetEncoder(nn.Module):
    """Shared parts: resizing + normalisation, standardisation buffers, strict save / load.

    Subclasses set `token_dim`, build their network, implement `_tokens(pixels) -> (B, G*G, D)` on normalised
    pixels, and `architecture() -> dict` (JSON) + `_from_architecture(cfg, arch)` for save / load.
    """

    def __init__(self, cfg: TargetConfig, token_dim: int, mean=CLIP_MEAN, std=CLIP_STD):
        super().__init__()
        self.cfg, self.token_dim, self.grid_size, self.image_size = cfg, token_dim, cfg.grid_size, cfg.image_size
        self.register_buffer("pixel_mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        # Per-channel statistics of the tokens, so the generator can train on standardised targets.
        self.register_buffer("feature_mean", torch.zeros(token_dim))
        self.register_buffer("feature_std", torch.ones(token_dim))
        # Optionally the generator works on the standardised features' top principal components (models/principal.py).
        # CLIP-kind features only: VAE latents are already a few decorrelated channels.
        self.principal = (PrincipalComponents(token_dim, cfg.principal_components, cfg.whiten_components)
                          if cfg.principal_components and cfg.kind == "clip" else None)

    @property
    def latent_dim(self) -> int:
        """Channels per token the generator produces: the principal components kept, else every feature."""
        return self.principal.components if self.principal is not None else self.token_dim

    def resize(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, 3, S, S), S = image_size (bicubic, antialiased; a no-op at the right size)."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images (B, 3, H, W), got {tuple(images.shape)}")
        if images.shape[-2:] != (self.image_size, self.image_size):
            images = F.interpolate(images, size=(self.image_size, self.image_size), mode="bicubic",
                                   antialias=True, align_corners=False)
        return images

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> (B, 3, S, S) normalised with the encoder's mean / std."""
        images = self.resize(images)
        return (images - self.pixel_mean.to(images.dtype)) / self.pixel_std.to(images.dtype)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> (B, G*G, D) raw tokens (not standardised)."""
        return self._tokens(self.preprocess(images))

    def standardize(self, tokens: torch.Tensor) -> torch.Tensor:
        """Raw tokens (B, N, D) -> per-channel standardised tokens (B, N, D)."""
        return (tokens - self.feature_mean.to(tokens.dtype)) / self.feature_std.to(tokens.dtype)

    def destandardize(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens * self.feature_std.to(tokens.dtype) + self.feature_mean.to(tokens.dtype)

    def normalize(self, tokens: torch.Tensor) -> torch.Tensor:
        """Raw tokens (B, N, D) -> the generator's targets (B, N, latent_dim): standardised, then projected."""
        standard = self.standardize(tokens)
        return self.principal.project(standard) if self.principal is not None else standard

    def denormalize(self, tokens: torch.Tensor) -> torch.Tensor:
        """The generator's output (B, N, latent_dim) -> raw tokens (B, N, D) for the decoder."""
        return self.destandardize(self.principal.lift(tokens) if self.principal is not None else tokens)

    @torch.no_grad()
    def fit_feature_stats(self, tokens: torch.Tensor, eps: float = 1e-6) -> None:
        """Set feature_mean / feature_std from tokens (B, N, D), per channel over batch and positions."""
        flat = tokens.reshape(-1, self.token_dim).float()
        self.feature_mean.copy_(flat.mean(0))
        self.feature_std.copy_(flat.std(0).clamp_min(eps))
        if self.principal is not None:
            self.fit_principal_components(tokens)

    @torch.no_grad()
    def fit_principal_components(self, tokens: torch.Tensor) -> float | None:
        """Fit the principal components on raw tokens (B, N, D); the share of variance kept (None when unused)."""
        if self.principal is None:
            return None
        return self.principal.fit(self.standardize(tokens.float()))

    @property
    def needs_principal_fit(self) -> bool:
        return self.principal is not None and self.principal.needs_fit

    def save_pretrained(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}, str(directory / WEIGHTS_FILE))
        config = {"class": type(self).__name__, "kind": self.cfg.kind, "encoder": self.cfg.encoder,
                  "token_dim": self.token_dim, "architecture": self.architecture()}
        (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2), encoding="utf-8")

    @classmethod
    def from_pretrained(cls, directory: str | Path, cfg: TargetConfig) -> TargetEncoder:
        """Rebuild from the saved architecture and load every weight strictly; `cfg` gives grid and image size."""
        directory = Path(directory)
        require_files(directory, [CONFIG_FILE, WEIGHTS_FILE], "target encoder")
        saved = json.loads((directory / CONFIG_FILE).read_text(encoding="utf-8"))
        if saved.get("class") != cls.__name__:
            raise CheckpointError(f"target encoder: {directory} holds a {saved.get('class')}, not a {cls.__name__}")
        module = cls._from_architecture(cfg, saved["architecture"])
        # A target encoder saved before its principal components were configured loads with them unfitted; the
        # generation stage fits them (until then they keep the first K channels).
        load_state_strict(module, directory / WEIGHTS_FILE, "target encoder", optional_prefix="principal.")
        return module.eval()

    def architecture(self) -> dict:
        raise NotImplementedError

    @classmethod
    def _from_architecture(cls, cfg: TargetConfig, arch: dict) -> TargetEncoder:
        raise NotImplementedError

    def _tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class CLIPTargetEncoder(TargetEncoder):
    """`transformers` CLIP / SigLIP vision tower. Mini: a tiny `CLIPModel` (vision + text, trainable
    contrastively) built from `cfg.model`; full: `CLIPVisionModel` / `SiglipVisionModel` from `cfg.pretrained_path`."""

    def __init__(self, cfg: TargetConfig, text_vocab_size: int | None = None, eos_token_id: int | None = None,
                 model: nn.Module | None = None):
        if model is None:
            model = self._pretrained(cfg) if cfg.pretrained_path else CLIPModel(
                _mini_clip_config(cfg, text_vocab_size, eos_token_id))
        vision_config = model.config.vision_config if isinstance(model, CLIPModel) else model.config
        siglip = cfg.encoder == "siglip"
        super().__init__(cfg, vision_config.hidden_size, SIGLIP_MEAN if siglip else CLIP_MEAN,
                         SIGLIP_STD if siglip else CLIP_STD)
        self.model = model
        self.patch_grid = vision_config.image_size // vision_config.patch_size
        if vision_config.image_size != cfg.image_size:
            raise ValueError(f"target.image_size {cfg.image_size} differs from the encoder's {vision_config.image_size}")

    @staticmethod
    def _pretrained(cfg: TargetConfig) -> nn.Module:
        model_class = SiglipVisionModel if cfg.encoder == "siglip" else CLIPVisionModel
        model, info = model_class.from_pretrained(cfg.pretrained_path, local_files_only=True, output_loading_info=True)
        # A full CLIP / SigLIP checkpoint also holds the text tower: only a missing vision weight is an error.
        check_loading_info({k: v for k, v in info.items() if k != "unexpected_keys"}, "target encoder",
                           Path(cfg.pretrained_path))
        return model

    @property
    def vision(self) -> nn.Module:
        return self.model.vision_model

    def _tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        # hidden_states[-1] is the last block's output before SigLIP's post-layernorm (CLIP applies none to it).
        states = self.vision(pixel_values=pixels, output_hidden_states=True).hidden_states[-1]
        prefix = states.shape[1] - self.patch_grid**2  # 1 CLS token for CLIP, none for SigLIP
        patches = states[:, prefix:]
        grid = patches.transpose(1, 2).reshape(patches.shape[0], self.token_dim, self.patch_grid, self.patch_grid)
        return pool_grid(grid, self.grid_size)

    def contrastive_loss(self, images: torch.Tensor, input_ids: torch.Tensor,
                         attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """CLIP's symmetric InfoNCE. images (B, 3, H, W) in [0, 1]; input_ids / attention_mask (B, L), each row
        holding the end token (the text embedding is read there)."""
        if not isinstance(self.model, CLIPModel):
            raise TypeError("contrastive_loss needs the text tower: only the mini CLIPModel has one")
        eos = self.model.config.text_config.eos_token_id
        if not bool((input_ids == eos).any(dim=1).all()):
            raise ValueError(f"every row of input_ids must contain the end token id {eos} (CLIP pools there)")
        out = self.model(input_ids=input_ids, pixel_values=self.preprocess(images), attention_mask=attention_mask,
                         return_loss=True)
        return out.loss

    def architecture(self) -> dict:
        return {"model_type": self.model.config.model_type, "config": self.model.config.to_dict()}

    @classmethod
    def _from_architecture(cls, cfg: TargetConfig, arch: dict) -> CLIPTargetEncoder:
        classes = {"clip": (CLIPConfig, CLIPModel), "clip_vision_model": (CLIPVisionConfig, CLIPVisionModel),
                   "siglip_vision_model": (SiglipVisionConfig, SiglipVisionModel)}
        if arch.get("model_type") not in classes:
            raise CheckpointError(f"target encoder: unknown saved model_type {arch.get('model_type')!r}")
        config_class, model_class = classes[arch["model_type"]]
        return cls(cfg, model=model_class(config_class.from_dict(arch["config"])))


def _mini_clip_config(cfg: TargetConfig, text_vocab_size: int | None, eos_token_id: int | None) -> CLIPConfig:
    model = dict(cfg.model)
    _check_sections(model, {"vision", "text"}, "a mini CLIP")
    vision = {"image_size": cfg.image_size, **model.get("vision", {})}
    text = dict(model.get("text", {}))
    if text_vocab_size is not None:
        text["vocab_size"] = text_vocab_size
    if eos_token_id is not None:
        text["eos_token_id"] = eos_token_id
    if "vocab_size" not in text:
        raise ValueError("mini CLIP: give text_vocab_size (or target.model.text.vocab_size)")
    if text.get("eos_token_id") is None or text["eos_token_id"] == LEGACY_CLIP_EOS_ID:
        raise ValueError(f"mini CLIP: give the tokenizer's end token id (eos_token_id), not None or "
                         f"{LEGACY_CLIP_EOS_ID} (CLIP's legacy argmax pooling)")
    text.setdefault("bos_token_id", None)  # CLIP's default (49406) lies outside a small vocabulary; unused here
    extra = {k: model[k] for k in ("projection_dim", "logit_scale_init_value") if k in model}
    return CLIPConfig(text_config=text, vision_config=vision, **extra)


def _import_timm():
    try:
        import timm
    except ImportError as error:  # timm imports torchvision, which must match the installed torch
        raise ImportError(f"EVA-CLIP needs timm (and a torchvision matching torch): {error}") from error
    return timm


class EVACLIPTargetEncoder(TargetEncoder):
    """EVA-CLIP-E/14-plus through timm (448 px -> 32x32 patches -> 8x8 x 1792). `cfg.model["eva"]` overrides timm
    keyword arguments (tests use a tiny depth / width). Builds on the meta device for parameter counting."""

    def __init__(self, cfg: TargetConfig, overrides: dict | None = None):
        model = dict(cfg.model)
        _check_sections(model, {"eva"}, "EVA-CLIP")
        overrides = dict(model.get("eva", {}) if overrides is None else overrides)
        network = _import_timm().create_model(EVA_CLIP_ARCH, pretrained=False, img_size=cfg.image_size, num_classes=0,
                                              **overrides)
        network.norm = nn.Identity()  # the final norm is never used (targets are the last block's output)
        super().__init__(cfg, network.embed_dim)
        self.model, self.overrides = network, overrides
        if cfg.pretrained_path:
            self._load_pretrained(Path(cfg.pretrained_path))

    def _load_pretrained(self, path: Path) -> None:
        from timm.models.eva import checkpoint_filter_fn

        if path.is_dir():
            files = sorted(path.glob("*.safetensors"))
            if len(files) != 1:
                raise CheckpointError(f"target encoder: {path} must hold exactly one .safetensors file, found {len(files)}")
            path = files[0]
        if not path.is_file():
            raise CheckpointError(f"target encoder: {path} is missing")
        # The filter maps EVA / open_clip key names to timm's and resamples the position table to this image size.
        state = checkpoint_filter_fn(load_file(str(path)), self.model)
        state = {k: v for k, v in state.items() if not k.startswith(EVA_UNUSED_PREFIXES)}
        own = self.model.state_dict()
        mismatched = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items()
                      if k in own and v.shape != own[k].shape]
        check_loading_info({"missing_keys": sorted(set(own) - set(state)), "unexpected_keys": sorted(set(state) - set(own)),
                            "mismatched_keys": mismatched}, "target encoder", path)
        self.model.load_state_dict(state, strict=True)

    def _tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        # Last block output, no final norm, prefix (CLS) tokens dropped, as (B, D, h, w).
        grid = self.model.forward_intermediates(pixels, indices=1, norm=False, output_fmt="NCHW",
                                                intermediates_only=True)[-1]
        return pool_grid(grid, self.grid_size)

    def architecture(self) -> dict:
        return {"arch": EVA_CLIP_ARCH, "overrides": self.overrides}

    @classmethod
    def _from_architecture(cls, cfg: TargetConfig, arch: dict) -> EVACLIPTargetEncoder:
        if arch.get("arch") != EVA_CLIP_ARCH:
            raise CheckpointError(f"target encoder: saved arch {arch.get('arch')!r} is not {EVA_CLIP_ARCH!r}")
        return cls(_without_pretrained(cfg), overrides=arch["overrides"])


class VAETargetEncoder(TargetEncoder):
    """A `diffusers.AutoencoderKL` whose latent grid is G x G (kind "vae"): tokens = latent mean * scaling factor."""

    def __init__(self, cfg: TargetConfig, vae: AutoencoderKL | None = None):
        if vae is None and cfg.pretrained_path:  # a local diffusers AutoencoderKL folder
            vae, info = AutoencoderKL.from_pretrained(cfg.pretrained_path, output_loading_info=True,
                                                      low_cpu_mem_usage=False)
            check_loading_info(info, "target VAE", Path(cfg.pretrained_path))
        elif vae is None:
            model = dict(cfg.model)
            _check_sections(model, {"vae"}, "a VAE target")
            vae = AutoencoderKL(**model.get("vae", MINI_TARGET_MODEL["vae"]))
        super().__init__(cfg, vae.config.latent_channels, VAE_MEAN, VAE_STD)
        self.vae = vae
        factor = 2 ** (len(vae.config.block_out_channels) - 1)
        if cfg.image_size // factor != cfg.grid_size:
            raise ValueError(f"VAE target: {cfg.image_size} px / factor {factor} is not the {cfg.grid_size}x"
                             f"{cfg.grid_size} grid; change the VAE's block_out_channels")

    def _tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        latents = self.vae.encode(pixels).latent_dist.mean * self.vae.config.scaling_factor
        return latents.flatten(2).transpose(1, 2)

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, G*G, C) -> images (B, 3, H, W) in [0, 1]."""
        b, _, c = tokens.shape
        latents = tokens.transpose(1, 2).reshape(b, c, self.grid_size, self.grid_size) / self.vae.config.scaling_factor
        return ((self.vae.decode(latents).sample + 1) / 2).clamp(0, 1)

    def vae_loss(self, images: torch.Tensor, kl_weight: float = KL_WEIGHT) -> torch.Tensor:
        """Training loss of the VAE itself (it must be trained before its latents are targets)."""
        return kl_reconstruction_loss(self.vae, self.resize(images), kl_weight)

    def architecture(self) -> dict:
        return {k: v for k, v in dict(self.vae.config).items() if not k.startswith("_")}

    @classmethod
    def _from_architecture(cls, cfg: TargetConfig, arch: dict) -> VAETargetEncoder:
        return cls(_without_pretrained(cfg), vae=AutoencoderKL.from_config(arch))


def _without_pretrained(cfg: TargetConfig) -> TargetConfig:
    """The same config with no pretrained_path: from_pretrained loads its own weights, not the original ones."""
    from dataclasses import replace

    return replace(cfg, pretrained_path=None)


def build_target_encoder(cfg: TargetConfig, text_vocab_size: int | None = None,
                         eos_token_id: int | None = None) -> TargetEncoder:
    """The encoder `cfg` names. text_vocab_size / eos_token_id: the mini CLIP's text tower (from the tokenizer)."""
    if cfg.kind == "vae":
        return VAETargetEncoder(cfg)
    if cfg.encoder == "eva_clip":
        return EVACLIPTargetEncoder(cfg)
    if cfg.encoder == "siglip" and not cfg.pretrained_path:
        raise ValueError("target.encoder 'siglip' needs target.pretrained_path (a local SigLIP folder)")
    return CLIPTargetEncoder(cfg, text_vocab_size, eos_token_id)


def load_target_encoder(directory: str | Path, cfg: TargetConfig) -> TargetEncoder:
    """`from_pretrained` of the class `cfg` names."""
    if cfg.kind == "vae":
        return VAETargetEncoder.from_pretrained(directory, cfg)
    return (EVACLIPTargetEncoder if cfg.encoder == "eva_clip" else CLIPTargetEncoder).from_pretrained(directory, cfg)
