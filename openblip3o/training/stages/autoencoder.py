"""The autoencoder stage, three engine tasks in order: the decoder's VAE, the target encoder, the decoder.

The recipe (a training-only per-token pixel head beside CLIP's contrastive loss, so the tokens carry shape; the
decoder conditioned spatially on the token grid) lives in `..autoencoder_recipe`; this module adapts its tasks
to the engine: `batch(start, size)` by position and `loss(batch, generator)`.
"""

from __future__ import annotations

from ...models.unified import BLIP3oModel
from .. import autoencoder_recipe as recipe


class EngineTask:
    """A recipe task (batch by step number) seen by the engine (batch by example position)."""

    def __init__(self, name: str, task):
        self.name, self.task = name, task

    def modules(self):
        return self.task.modules()

    def batch(self, start: int, size: int):
        if start % size:
            raise ValueError(f"batch start {start} is not a multiple of its size {size}")
        return self.task.batch(start // size, size)

    def loss(self, batch, generator):
        return self.task.loss(batch)

    def finish(self):
        return self.task.finish()


def autoencoder_tasks(model: BLIP3oModel, seed: int = 0) -> dict:
    """{"vae": factory, "encoder": factory, "decoder": factory}: built lazily, since each needs the one before."""
    if model.decoder is None:  # target kind "vae": the target VAE is the whole autoencoder
        return {"vae": lambda: EngineTask("vae", _TargetVAETask(model.target_encoder, seed))}
    return {
        "vae": lambda: EngineTask("vae", recipe.VAETask(model.decoder, seed)),
        "encoder": lambda: EngineTask("encoder", recipe.EncoderTask(model.target_encoder, model.backbone.tokenizer, seed)),
        "decoder": lambda: EngineTask("decoder", recipe.DecoderTask(model.decoder, model.target_encoder, seed)),
    }


class _TargetVAETask:
    """The `vae` design-space variant: the target encoder's own AutoencoderKL, then its token statistics."""

    def __init__(self, encoder, seed: int = 0):
        self.encoder, self.data = encoder, recipe.ShapesBatches(seed, encoder.image_size)
        encoder.requires_grad_(True)

    def modules(self):
        return {"vae": self.encoder}

    def batch(self, step: int, batch_size: int):
        return self.data(step, batch_size)

    def loss(self, batch):
        loss = self.encoder.vae_loss(batch["images"])
        return loss, {"vae": loss.item()}

    def finish(self):
        import torch

        self.encoder.eval().requires_grad_(False)
        with torch.no_grad():
            self.encoder.fit_feature_stats(self.encoder.encode(self.data(0, 256)["images"]))
