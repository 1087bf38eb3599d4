"""The autoencoder stage: three engine tasks in order, each reading its stage's data source by position.

1. VAETask      the decoder's tiny AutoencoderKL (KL-regularised reconstruction); `finish` freezes it and fits its
                latent scale.
2. EncoderTask  the CLIP target encoder: CLIP's contrastive loss on long captions + a training-only per-token head
                that predicts the pixels around its patch (so tokens carry shape, colour and position, which the
                contrastive loss alone does not: its shape probe was 0.39).
3. DecoderTask  the UNet (+ condition projector) on the frozen encoder's raw tokens: the decoder is always called
                on raw (denormalised) tokens (`Autoencoder.reconstruct`, `BLIP3oModel.decode`), so it trains on them.
With a VAE-kind target (`target.kind: vae`) the target's own AutoencoderKL is the whole autoencoder: one task.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ...data.sources import DataSource, DataSourceConfig, build_source
from ...models.decoder import DiffusionDecoder
from ...models.encoders import CLIPTargetEncoder, to_tensor
from ...models.tokenizer import PAD_TOKEN, token_id
from ...models.unified import BLIP3oModel
from .data import SourceState
from .vision_labels import TokenLabelHeads, scenes_of

MAX_TEXT_TOKENS = 64  # the mini CLIP text tower's max_position_embeddings; long captions are <= ~50 words
STATS_IMAGES = 256  # images of the first training positions that fit the VAE's scale and the features' statistics
PIXEL_CONTEXT = 4  # pixels around each token's patch that its training-only head predicts too


def image_batch(source: DataSource, start: int, size: int, image_size: int, with_examples: bool = False) -> dict:
    """Examples [start, start + size) of the source: images (B, 3, S, S) in [0, 1] and their long captions (and
    the examples themselves with `with_examples`)."""
    examples = source.examples(start, size)
    batch = {"images": to_tensor([e.image for e in examples], image_size),
             "captions": [e.annotation["captions"]["long"] for e in examples]}
    return batch | ({"examples": examples} if with_examples else {})


def tokenize_captions(tokenizer, captions: list[str], max_length: int = MAX_TEXT_TOKENS) -> tuple[torch.Tensor, torch.Tensor]:
    """Captions -> (ids, mask) (B, L): the words, then PAD_TOKEN as the end token, right-padded with PAD_TOKEN."""
    end = token_id(tokenizer, PAD_TOKEN)
    rows = [ids[: max_length - 1] + [end] for ids in tokenizer(captions, add_special_tokens=False)["input_ids"]]
    length = max(map(len, rows))
    ids = torch.full((len(rows), length), end, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    return ids, mask


def patch_targets(images: torch.Tensor, patch: int, grid: int, context: int = 0) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] -> (B, G*G, 3*(p+2c)^2): each grid cell's pixels plus `context` pixels around it
    (the black background outside the image), in [-1, 1]."""
    x = images * 2 - 1
    if context:
        x = F.pad(x, (context,) * 4, value=-1.0)  # the black background, in [-1, 1]
    window = patch + 2 * context
    cells = F.unfold(x, kernel_size=window, stride=patch)  # (B, 3*window^2, G*G)
    if cells.shape[-1] != grid * grid:
        raise ValueError(f"{cells.shape[-1]} patches, expected {grid * grid}")
    return cells.transpose(1, 2)


class VAETask(SourceState):
    """Sub-stage 1: the decoder's AutoencoderKL, `decoder.vae_loss`; `finish` freezes it and fits its scale."""

    name = "vae"

    def __init__(self, decoder: DiffusionDecoder, source: DataSource, kl_weight: float | None = None):
        self.decoder, self.source, self.kl_weight = decoder, source, kl_weight
        decoder.vae.requires_grad_(True)

    def modules(self) -> dict[str, nn.Module]:
        return {"vae": self.decoder.vae}

    def batch(self, start: int, size: int) -> dict:
        return image_batch(self.source, start, size, self.decoder.cfg.image_size)

    def loss(self, batch: dict, generator: torch.Generator) -> tuple[torch.Tensor, dict]:
        kwargs = {} if self.kl_weight is None else {"kl_weight": self.kl_weight}
        loss = self.decoder.vae_loss(batch["images"], **kwargs)
        return loss, {"vae": loss.item()}

    @torch.no_grad()
    def finish(self) -> None:
        self.decoder.vae.requires_grad_(False).eval()
        self.decoder.fit_latent_scale(self.batch(0, STATS_IMAGES)["images"])


class PatchHead(nn.Module):
    """Training-only: a per-token linear map to the pixels of its patch and its surroundings."""

    def __init__(self, token_dim: int, patch: int, context: int):
        super().__init__()
        self.patch, self.context = patch, context
        self.proj = nn.Linear(token_dim, 3 * (patch + 2 * context) ** 2)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.proj(tokens)


class EncoderTask(SourceState):
    """Sub-stage 2: CLIP's contrastive loss on long captions + `pixel_weight` x MSE of a per-token pixel head
    + `label_weight` x cross-entropy of per-token shape / colour heads (ShapesWorld's exact labels).

    Why the labels: with the pixel head alone the tokens carried colour (58 % of their variance, a linear probe
    1.00 at the object's centre token) but hardly shape (5 % of the variance, probe 0.45, chance 0.17), and the DiT
    never learned to draw shapes from the prompt (denoising from sigma 0.6, the caption's shape words swapped or
    zeroed gave the same shapes). The heads are not part of the encoder (never saved with it); `encode` is
    untouched."""

    name = "encoder"

    def __init__(self, encoder: CLIPTargetEncoder, tokenizer, source: DataSource, pixel_weight: float = 1.0,
                 context: int = PIXEL_CONTEXT, contrastive_weight: float = 1.0, label_weight: float = 0.0):
        self.encoder, self.tokenizer, self.source = encoder, tokenizer, source
        self.patch = encoder.image_size // encoder.grid_size
        self.head = PatchHead(encoder.token_dim, self.patch, context)
        self.labels = TokenLabelHeads(encoder.token_dim, encoder.patch_grid) if label_weight > 0 else None
        self.pixel_weight, self.contrastive_weight, self.context = pixel_weight, contrastive_weight, context
        self.label_weight = label_weight
        # The pixel head reads the tokens of the vision pass that `contrastive_loss` already runs (kept by a hook),
        # so the tower runs once per step.
        self._states: torch.Tensor | None = None
        self._hook = encoder.model.vision_model.register_forward_hook(self._keep)
        encoder.train()

    def _keep(self, module, args, output) -> None:
        self._states = output.last_hidden_state

    def modules(self) -> dict[str, nn.Module]:
        heads = {"label_heads": self.labels} if self.labels is not None else {}
        return {"encoder": self.encoder, "pixel_head": self.head} | heads

    def batch(self, start: int, size: int) -> dict:
        batch = image_batch(self.source, start, size, self.encoder.image_size, with_examples=True)
        batch["input_ids"], batch["attention_mask"] = tokenize_captions(self.tokenizer, batch["captions"])
        examples = batch.pop("examples")
        if self.labels is not None:
            batch["labels"] = self.labels.labels(scenes_of(examples, "encoder_label_weight"))
        return batch

    def loss(self, batch: dict, generator: torch.Generator) -> tuple[torch.Tensor, dict]:
        images = batch["images"]
        logs = {}
        total = torch.zeros((), device=images.device)
        self._states = None
        if self.contrastive_weight:
            contrastive = self.encoder.contrastive_loss(images, batch["input_ids"], batch["attention_mask"])
            total = total + self.contrastive_weight * contrastive
            logs["contrastive"] = contrastive.item()
        if self.pixel_weight or self.labels is not None:
            if self._states is None:  # no contrastive pass this step
                self.encoder.model.vision_model(pixel_values=self.encoder.preprocess(images))
            states, self._states = self._states, None
            tokens = states[:, states.shape[1] - self.encoder.patch_grid ** 2:]  # = encoder.encode(images) at 8x8
        if self.pixel_weight:
            target = patch_targets(images, self.patch, self.encoder.grid_size, self.context)
            pixel = F.mse_loss(self.head(tokens), target)
            total = total + self.pixel_weight * pixel
            logs["pixel"] = pixel.item()
        if self.labels is not None:
            label, accuracy = self.labels.token_loss(tokens, batch["labels"])
            total = total + self.label_weight * label
            logs |= {"labels": label.item(), **accuracy}
        return total, logs

    def finish(self) -> None:
        """Freeze the encoder and fit its feature statistics and principal components (the DiT's target space) on
        the first STATS_IMAGES training images: they belong to the encoder, so retraining the decoder alone
        (`--parts decoder`) leaves a trained DiT's target space where it was."""
        self._hook.remove()
        self.encoder.eval().requires_grad_(False)
        with torch.no_grad():
            self.encoder.fit_feature_stats(self.encoder.encode(
                image_batch(self.source, 0, STATS_IMAGES, self.encoder.image_size)["images"]))


class DecoderTask(SourceState):
    """Sub-stage 3: the decoder's UNet and condition projector on the frozen encoder's raw tokens.

    condition_noise > 0: conditioning augmentation (as cascaded diffusion models condition their upsamplers on
    noised inputs). Each sample's tokens are taken into the DiT's target space, noised there with a level drawn
    uniformly from [0, condition_noise] (target units: unit mean square), and brought back; so the decoder trains on
    what a generator can output (the principal-component round trip) and learns to draw a clean object from tokens
    that say it only roughly. Why: the DiT's samples name the right shape (probes on true tokens read it in 42 of 42
    single-object prompts) but their footprint is rough, and a decoder trained on exact tokens drew it as a blob."""

    name = "decoder"

    def __init__(self, decoder: DiffusionDecoder, encoder, source: DataSource, condition_noise: float = 0.0,
                 exact_rate: float = 0.0):
        if condition_noise < 0:
            raise ValueError(f"condition_noise must be >= 0, got {condition_noise}")
        if not 0.0 <= exact_rate <= 1.0:
            raise ValueError(f"exact_rate must be within [0, 1], got {exact_rate}")
        self.decoder, self.encoder, self.source = decoder, encoder, source
        self.condition_noise, self.exact_rate = condition_noise, exact_rate
        decoder.vae.requires_grad_(False).eval()
        encoder.eval().requires_grad_(False)
        decoder.unet.train()

    def images(self, start: int, size: int) -> torch.Tensor:
        return image_batch(self.source, start, size, self.decoder.cfg.image_size)["images"]

    def modules(self) -> dict[str, nn.Module]:
        return {"unet": self.decoder.unet, "condition": self.decoder.condition}

    def batch(self, start: int, size: int) -> dict:
        images = self.images(start, size)
        with torch.no_grad():
            return {"images": images, "tokens": self.encoder.encode(images)}

    @torch.no_grad()
    def augment(self, tokens: torch.Tensor, generator: torch.Generator | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw tokens (B, N, D) -> the same noised in the target space at per-sample levels U(0, condition_noise)
        (0 for a share `exact_rate` of the rows), and those (B,) levels."""
        target = self.encoder.normalize(tokens)
        level = torch.rand(target.shape[0], generator=generator, device=target.device) * self.condition_noise
        if self.exact_rate > 0:  # drawn only when asked, so recipes without it keep their random stream
            noised = torch.rand(target.shape[0], generator=generator, device=target.device) >= self.exact_rate
            level = level * noised.to(level.dtype)
        noise = torch.randn(target.shape, generator=generator, device=target.device, dtype=target.dtype)
        return self.encoder.denormalize(target + level[:, None, None] * noise), level

    def loss(self, batch: dict, generator: torch.Generator) -> tuple[torch.Tensor, dict]:
        tokens = batch["tokens"]
        level = torch.zeros(tokens.shape[0], device=tokens.device)
        if self.condition_noise:
            tokens, level = self.augment(tokens, generator)
        # A decoder told the level learns to trust exact tokens and to read rough ones loosely; one that is not
        # told draws every token set as if it were rough (measured: the exact-token ceiling falls as the noise rises).
        loss = self.decoder.loss(batch["images"], tokens, level=level if self.decoder.level_conditioning else None)
        return loss, {"flow": loss.item()}

    def finish(self) -> None:
        self.decoder.eval()


class TargetVAETask(SourceState):
    """The `vae` design-space variant: the target encoder's own AutoencoderKL, then its token statistics."""

    name = "vae"

    def __init__(self, encoder, source: DataSource):
        self.encoder, self.source = encoder, source
        encoder.requires_grad_(True)

    def modules(self) -> dict[str, nn.Module]:
        return {"vae": self.encoder}

    def batch(self, start: int, size: int) -> dict:
        return image_batch(self.source, start, size, self.encoder.image_size)

    def loss(self, batch: dict, generator: torch.Generator) -> tuple[torch.Tensor, dict]:
        loss = self.encoder.vae_loss(batch["images"])
        return loss, {"vae": loss.item()}

    def finish(self) -> None:
        self.encoder.eval().requires_grad_(False)
        with torch.no_grad():
            self.encoder.fit_feature_stats(self.encoder.encode(self.batch(0, STATS_IMAGES)["images"]))


def autoencoder_tasks(model: BLIP3oModel, seed: int = 0, data: DataSourceConfig | None = None,
                      label_weight: float = 0.0, condition_noise: float = 0.0,
                      exact_rate: float = 0.0) -> dict[str, Callable]:
    """{sub-stage: task factory} in training order; built lazily, since each needs the one before trained.

    Each sub-stage gets its own source (one sequential reader per task for shards), all reading `data`.
    label_weight: the encoder's per-token label heads (`EncoderTask`); condition_noise, exact_rate: the decoder's
    conditioning augmentation (`DecoderTask`)."""
    if model.decoder is None:  # target kind "vae": the target VAE is the whole autoencoder
        return {"vae": lambda: TargetVAETask(model.target_encoder, build_source(data, seed))}
    return {
        "vae": lambda: VAETask(model.decoder, build_source(data, seed)),
        "encoder": lambda: EncoderTask(model.target_encoder, model.backbone.tokenizer, build_source(data, seed),
                                       label_weight=label_weight),
        "decoder": lambda: DecoderTask(model.decoder, model.target_encoder, build_source(data, seed),
                                       condition_noise=condition_noise, exact_rate=exact_rate),
    }
