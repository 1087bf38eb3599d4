"""The mini autoencoder recipe (target encoder + diffusion decoder), as three sub-stage tasks and a plain loop.

Temporary home: the training engine is meant to absorb these tasks. Each task has
    modules() -> {name: nn.Module}      what is optimised
    batch(step, batch_size) -> dict     a pure function of the step: scenes [step*B, (step+1)*B) of the train split
    loss(batch) -> (Tensor, {name: float})
and `run(task, steps, batch_size, lr)` trains it with AdamW, linear warm-up, cosine decay and grad clip 1.0.

Sub-stages, in order:
1. VAETask      the decoder's tiny AutoencoderKL (KL-regularised reconstruction); then `finish` fits its scale.
2. EncoderTask  the CLIP target encoder: contrastive loss on long captions + a training-only per-token head that
                predicts the pixels around its patch (so tokens carry shape, colour and position, which the
                contrastive loss alone does not: its shape probe was 0.39).
3. DecoderTask  the UNet (+ condition projector) on the frozen encoder's raw tokens: the decoder is always called
                on raw (denormalised) tokens (`Autoencoder.reconstruct`, `BLIP3oModel.decode`), so it trains on them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..data.shapes import ShapesWorld
from ..models.decoder import DiffusionDecoder
from ..models.encoders import CLIPTargetEncoder, to_tensor
from ..models.tokenizer import PAD_TOKEN, add_generation_tokens, build_shapes_tokenizer, token_id

TRAIN_SPLIT = "train"
MAX_TEXT_TOKENS = 64  # the mini CLIP text tower's max_position_embeddings; long captions are <= ~50 words


class ShapesBatches:
    """Batch `step` of size B = examples [step*B, (step+1)*B) of ShapesWorld(split, seed): images and captions."""

    def __init__(self, seed: int = 0, image_size: int = 64, split: str = TRAIN_SPLIT):
        self.world, self.image_size = ShapesWorld(split, seed), image_size

    def __call__(self, step: int, batch_size: int) -> dict:
        examples = [self.world[i] for i in range(step * batch_size, (step + 1) * batch_size)]
        return {"images": to_tensor([e.image for e in examples], self.image_size),
                "captions": [e.annotation["captions"]["long"] for e in examples],
                "scenes": [e.scene for e in examples]}


def mini_tokenizer():
    """The backbone's tokenizer (with the generation tokens), whose PAD_TOKEN ends every CLIP caption."""
    tokenizer = build_shapes_tokenizer()
    add_generation_tokens(tokenizer)
    return tokenizer


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
    (zero outside the image), in [-1, 1]."""
    x = images * 2 - 1
    if context:
        x = F.pad(x, (context,) * 4, value=-1.0)  # the black background, in [-1, 1]
    window = patch + 2 * context
    cells = F.unfold(x, kernel_size=window, stride=patch)  # (B, 3*window^2, G*G)
    if cells.shape[-1] != grid * grid:
        raise ValueError(f"{cells.shape[-1]} patches, expected {grid * grid}")
    return cells.transpose(1, 2)


class VAETask:
    """Sub-stage 1: the decoder's AutoencoderKL, `decoder.vae_loss`. Call `finish` afterwards (freeze + scale)."""

    def __init__(self, decoder: DiffusionDecoder, seed: int = 0, kl_weight: float | None = None):
        self.decoder, self.data, self.kl_weight = decoder, ShapesBatches(seed, decoder.cfg.image_size), kl_weight
        decoder.vae.requires_grad_(True)

    def modules(self) -> dict[str, nn.Module]:
        return {"vae": self.decoder.vae}

    def batch(self, step: int, batch_size: int) -> dict:
        return self.data(step, batch_size)

    def loss(self, batch: dict) -> tuple[torch.Tensor, dict]:
        kwargs = {} if self.kl_weight is None else {"kl_weight": self.kl_weight}
        loss = self.decoder.vae_loss(batch["images"], **kwargs)
        return loss, {"vae": loss.item()}

    @torch.no_grad()
    def finish(self, num: int = 256) -> float:
        """Freeze the VAE and fit its latent scale on `num` train images (a range no training batch uses first)."""
        self.decoder.vae.requires_grad_(False).eval()
        return self.decoder.fit_latent_scale(self.data(0, num)["images"])


class PatchHead(nn.Module):
    """Training-only: a per-token linear map to the pixels of its patch and its surroundings."""

    def __init__(self, token_dim: int, patch: int, context: int):
        super().__init__()
        self.patch, self.context = patch, context
        self.proj = nn.Linear(token_dim, 3 * (patch + 2 * context) ** 2)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.proj(tokens)


class EncoderTask:
    """Sub-stage 2: CLIP contrastive loss on long captions + `pixel_weight` x MSE of a per-token pixel head.

    The head is not part of the encoder (never saved with it); `encode` is untouched."""

    def __init__(self, encoder: CLIPTargetEncoder, tokenizer=None, seed: int = 0, pixel_weight: float = 1.0,
                 context: int = 4, contrastive_weight: float = 1.0):
        self.encoder, self.tokenizer = encoder, tokenizer or mini_tokenizer()
        self.data = ShapesBatches(seed, encoder.image_size)
        self.patch = encoder.image_size // encoder.grid_size
        self.head = PatchHead(encoder.token_dim, self.patch, context)
        self.pixel_weight, self.contrastive_weight, self.context = pixel_weight, contrastive_weight, context
        encoder.train()

    def modules(self) -> dict[str, nn.Module]:
        return {"encoder": self.encoder, "pixel_head": self.head}

    def batch(self, step: int, batch_size: int) -> dict:
        batch = self.data(step, batch_size)
        batch["input_ids"], batch["attention_mask"] = tokenize_captions(self.tokenizer, batch["captions"])
        return batch

    def loss(self, batch: dict) -> tuple[torch.Tensor, dict]:
        images = batch["images"]
        model = self.encoder.model
        pixels = self.encoder.preprocess(images)
        vision = model.vision_model(pixel_values=pixels, output_hidden_states=True)
        states = vision.hidden_states[-1]
        tokens = states[:, states.shape[1] - self.encoder.patch_grid ** 2:]  # = encoder.encode(images) at 8x8
        logs = {}
        total = torch.zeros((), device=images.device)
        if self.contrastive_weight:
            # CLIP's loss from the same vision pass (CLIPModel.forward would run the vision tower again).
            image_embeds = F.normalize(model.visual_projection(vision.pooler_output), dim=-1)
            text = model.text_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            text_embeds = F.normalize(model.text_projection(text.pooler_output), dim=-1)
            logits = model.logit_scale.exp() * text_embeds @ image_embeds.t()
            labels = torch.arange(len(logits), device=logits.device)
            contrastive = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2
            total = total + self.contrastive_weight * contrastive
            logs["contrastive"] = contrastive.item()
        if self.pixel_weight:
            target = patch_targets(images, self.patch, self.encoder.grid_size, self.context)
            pixel = F.mse_loss(self.head(tokens), target)
            total = total + self.pixel_weight * pixel
            logs["pixel"] = pixel.item()
        return total, logs

    def finish(self) -> None:
        self.encoder.eval().requires_grad_(False)


class PixelTokens(nn.Module):
    """A stand-in encoder for decoder checks: each token is its 8x8 patch's pixels (in [-1, 1]), D = 192."""

    def __init__(self, image_size: int = 64, grid_size: int = 8):
        super().__init__()
        self.image_size, self.grid_size = image_size, grid_size
        self.patch = image_size // grid_size
        self.token_dim = 3 * self.patch ** 2

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return patch_targets(images, self.patch, self.grid_size)


class DecoderTask:
    """Sub-stage 3: the decoder's UNet and condition projector on the frozen encoder's raw tokens.

    Also fits the encoder's feature statistics (for the generator) and, if unset, the VAE's latent scale."""

    def __init__(self, decoder: DiffusionDecoder, encoder, seed: int = 0, stats_images: int = 256):
        self.decoder, self.encoder = decoder, encoder
        self.data = ShapesBatches(seed, decoder.cfg.image_size)
        decoder.vae.requires_grad_(False).eval()
        encoder.eval().requires_grad_(False)
        sample = self.data(0, stats_images)["images"]
        with torch.no_grad():
            if hasattr(encoder, "fit_feature_stats"):
                encoder.fit_feature_stats(encoder.encode(sample))
        decoder.unet.train()

    def modules(self) -> dict[str, nn.Module]:
        return {"unet": self.decoder.unet, "condition": self.decoder.condition}

    def batch(self, step: int, batch_size: int) -> dict:
        batch = self.data(step, batch_size)
        with torch.no_grad():
            batch["tokens"] = self.encoder.encode(batch["images"])
        return batch

    def loss(self, batch: dict) -> tuple[torch.Tensor, dict]:
        loss = self.decoder.loss(batch["images"], batch["tokens"])
        return loss, {"flow": loss.item()}

    def finish(self) -> None:
        self.decoder.eval()


def lr_lambda(steps: int, warmup: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return factor


def run(task, steps: int, batch_size: int, lr: float, warmup: int | None = None, weight_decay: float = 0.01,
        betas: tuple[float, float] = (0.9, 0.99), clip: float = 1.0, start_step: int = 0, log_every: int = 50,
        seed: int = 0, log: Callable[[str], None] | None = print) -> dict:
    """Train `task` for `steps` AdamW steps (warm-up, cosine, grad clip). Returns timing and the loss history."""
    torch.manual_seed(seed)
    params = [p for m in task.modules().values() for p in m.parameters() if p.requires_grad]
    for module in task.modules().values():
        module.train()
    warmup = max(1, steps // 20) if warmup is None else warmup
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=betas)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(steps, warmup))
    history, start, window = [], time.perf_counter(), {}
    for step in range(start_step, steps):
        batch = task.batch(step, batch_size)
        loss, logs = task.loss(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, clip)
        optimizer.step()
        schedule.step()
        for key, value in logs.items():
            window.setdefault(key, []).append(value)
        if log_every and ((step + 1) % log_every == 0 or step + 1 == steps):
            means = {k: sum(v) / len(v) for k, v in window.items()}
            history.append({"step": step + 1, **means})
            elapsed = time.perf_counter() - start
            if log:
                text = " ".join(f"{k} {v:.4f}" for k, v in means.items())
                log(f"step {step + 1}/{steps} {text} lr {schedule.get_last_lr()[0]:.2e} "
                    f"{elapsed:.0f}s ({elapsed / (step + 1 - start_step):.3f} s/step)")
            window = {}
    seconds = time.perf_counter() - start
    return {"steps": steps - start_step, "seconds": seconds, "seconds_per_step": seconds / max(1, steps - start_step),
            "history": history}
