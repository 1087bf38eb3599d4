"""The unified model: backbone + queries condition the DiT, which generates target tokens; a decoder makes pixels.

One class for training and inference: `generation_loss` and `understanding_loss` train it, `sample_tokens`,
`decode` and `answer` run it, and all of them go through the backbone's one prompt template.
"""

from __future__ import annotations

import torch
from diffusers.utils.torch_utils import randn_tensor
from torch import nn

from ..config import ConfigError, ModelConfig, SamplingSettings
from ..objectives import build_objective
from .backbone import Backbone
from .decoder import DiffusionDecoder, build_decoder
from .encoders import build_target_encoder
from .generator import Generator
from .tokenizer import PAD_TOKEN, token_id

Generators = torch.Generator | list[torch.Generator] | None
EMPTY_PROMPT_SEED = 0


def tokens_to_grid(tokens: torch.Tensor, grid_size: int) -> torch.Tensor:
    """(B, G*G, D) row-major tokens -> (B, D, G, G)."""
    batch, count, dim = tokens.shape
    if count != grid_size * grid_size:
        raise ValueError(f"expected {grid_size * grid_size} tokens, got {count}")
    return tokens.transpose(1, 2).reshape(batch, dim, grid_size, grid_size)


def grid_to_tokens(grid: torch.Tensor) -> torch.Tensor:
    """(B, D, G, G) -> (B, G*G, D)."""
    return grid.flatten(2).transpose(1, 2)


class BLIP3oModel(nn.Module):
    def __init__(self, config: ModelConfig, backbone: Backbone, generator: Generator, target_encoder: nn.Module,
                 decoder: DiffusionDecoder | None):
        super().__init__()
        self.config = config
        self.backbone, self.generator = backbone, generator
        self.target_encoder, self.decoder = target_encoder, decoder
        self.objective = build_objective(config.objective)
        channels = generator.dit.config.in_channels
        if channels != getattr(target_encoder, "latent_dim", channels):
            raise ValueError(f"the generator makes {channels} channels per token but the target encoder's latent has "
                             f"{target_encoder.latent_dim} (target.principal_components changed? train a new generator)")
        if config.target.kind == "clip" and decoder is None:
            raise ValueError("target kind 'clip' needs a diffusion decoder")

    @classmethod
    def from_config(cls, config: ModelConfig) -> BLIP3oModel:
        """All components built from the configuration (random weights unless a `pretrained_path` is set)."""
        backbone = Backbone.from_config(config.backbone)
        # The mini CLIP's text tower shares the backbone's tokenizer; its end token is the pad token (never id 2,
        # which CLIP's legacy pooling treats specially).
        target_encoder = build_target_encoder(
            config.target, text_vocab_size=len(backbone.tokenizer), eos_token_id=token_id(backbone.tokenizer, PAD_TOKEN)
        )
        generator = Generator(config.generator, target_encoder.latent_dim, config.target.grid_size, backbone.condition_dim)
        decoder = build_decoder(config.decoder, config.target, target_encoder.token_dim)
        return cls(config, backbone, generator, target_encoder, decoder)

    # --- shapes -------------------------------------------------------------------------------------------------
    @property
    def grid_size(self) -> int:
        return self.config.target.grid_size

    @property
    def token_shape(self) -> tuple[int, int, int]:
        """(C, G, G): one generated sample on the DiT's grid (C = the target's latent_dim)."""
        return (self.target_encoder.latent_dim, self.grid_size, self.grid_size)

    # --- training -----------------------------------------------------------------------------------------------
    def generation_loss(self, images: torch.Tensor, captions: list[str], generator: torch.Generator | None = None,
                        weights: torch.Tensor | None = None) -> torch.Tensor:
        """images: (B, 3, H, W) in [0, 1]; captions: B strings -> scalar loss of the objective. weights: (B, 1, G, G)
        per-token loss weights on the DiT's grid, or None (every token alike, BLIP3-o)."""
        # Gradients reach the queries through the backbone even when its own weights are frozen.
        cond, mask = self.backbone.condition(captions)
        return self.objective.loss(self.generator, self._target_grid(images), cond, mask, generator, weights)

    @torch.no_grad()
    def _target_grid(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W) in [0, 1] -> the DiT's normalised targets on its grid (B, C, G, G)."""
        return tokens_to_grid(self.target_encoder.normalize(self.target_encoder.encode(images)), self.grid_size)

    def generation_binding_losses(self, images: torch.Tensor, captions: list[str], negatives: list[str | None],
                                  generator: torch.Generator | None = None, weights: torch.Tensor | None = None,
                                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """The generation loss and the binding hinge (objectives' `binding_loss`): images (B, 3, H, W) in [0, 1],
        B captions and B negatives (a caption's words bound differently, data/shapes/negatives.py; None where the
        caption has none). A caption and its negative share one draw of the word dropout, so the hinge sees only
        how the words are bound. Returns two scalars."""
        if not hasattr(self.objective, "binding_loss"):
            raise ConfigError(f"the binding loss needs the flow-matching objective, not {self.config.objective.name!r}")
        pairs = [i for i, negative in enumerate(negatives) if negative is not None]
        count = len(captions)
        keep = self.backbone.word_keep(count)
        if keep is not None:
            keep = torch.cat([keep, keep[pairs]])
        cond, mask = self.backbone.condition(list(captions) + [negatives[i] for i in pairs], word_keep=keep)
        return self.objective.binding_loss(
            self.generator, self._target_grid(images), cond[:count], mask[:count], cond[count:], mask[count:],
            torch.tensor(pairs, dtype=torch.long, device=cond.device), generator, weights)

    def understanding_loss(self, images, questions: list[str], answers: list[str],
                           follow_ups: list[list[tuple[str, str]]] | None = None) -> torch.Tensor:
        return self.backbone.understanding_loss(images, questions, answers, follow_ups)

    # --- inference ----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def sample_tokens(self, prompts: list[str], negative_prompts: list[str] | None = None, generator: Generators = None,
                      num_inference_steps: int | None = None, guidance_scale: float | None = None,
                      progress: bool = False) -> torch.Tensor:
        """Generate target tokens (B, G*G, D), denormalised, for B prompts.

        The backbone runs once for the batch: prompts and negative prompts together. Without negative prompts
        the unconditional branch is the zero condition, as trained.
        """
        settings = SamplingSettings(num_inference_steps, guidance_scale).resolved(self.config)
        steps, guidance = settings.num_inference_steps, settings.guidance_scale
        count = len(prompts)
        if negative_prompts is not None:
            cond_all, mask_all = self.backbone.condition(list(prompts) + list(negative_prompts))
            cond, uncond, mask, uncond_mask = cond_all[:count], cond_all[count:], mask_all[:count], mask_all[count:]
        else:
            (cond, mask), uncond, uncond_mask = self.backbone.condition(list(prompts)), None, None
        noise = randn_tensor((count, *self.token_shape), generator=generator, device=cond.device, dtype=cond.dtype)
        grid = self.objective.sample(self.generator, noise, cond, mask, uncond, uncond_mask,
                                     num_inference_steps=steps, guidance_scale=guidance, progress=progress)
        return self.target_encoder.denormalize(grid_to_tokens(grid))

    @torch.no_grad()
    def decoder_uncond(self, batch: int) -> torch.Tensor | None:
        """The decoder's unconditional tokens: None (zeros, as trained at mini scale) or, as in BLIP3-o, the
        generator's tokens for an empty prompt, made once with a fixed seed and cached."""
        if self.decoder is None or self.config.decoder.uncond == "zeros":
            return None
        if getattr(self, "_empty_prompt_tokens", None) is None:
            seed = torch.Generator(device="cpu").manual_seed(EMPTY_PROMPT_SEED)
            self._empty_prompt_tokens = self.sample_tokens([""], generator=seed)
        return self._empty_prompt_tokens.expand(batch, -1, -1)

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor, uncond_tokens: torch.Tensor | None = None, generator: Generators = None,
               num_inference_steps: int | None = None, guidance_scale: float | None = None,
               progress: bool = False, level: float | None = None) -> torch.Tensor:
        """Target tokens (B, G*G, D) -> images (B, 3, H, W) in [0, 1]. level: how rough the tokens are, for a decoder
        told so (`decoder.level_conditioning`): None = `decoder.generated_level` (tokens from the DiT); pass 0 for
        the exact tokens of an image."""
        if self.decoder is None:  # VAE latents are decoded by the VAE alone
            return self.target_encoder.decode(tokens)
        if uncond_tokens is None:
            uncond_tokens = self.decoder_uncond(tokens.shape[0])
        settings = SamplingSettings(decoder_num_inference_steps=num_inference_steps,
                                    decoder_guidance_scale=guidance_scale).resolved(self.config)
        return self.decoder.decode(
            tokens, uncond_tokens, num_inference_steps=settings.decoder_num_inference_steps,
            guidance_scale=settings.decoder_guidance_scale, generator=generator, progress=progress,
            level=self.config.decoder.generated_level if level is None else level,
        )

    @torch.no_grad()
    def answer(self, images, questions: list[str], max_new_tokens: int = 8) -> list[str]:
        return self.backbone.answer(images, questions, max_new_tokens=max_new_tokens)
