"""Understanding: the backbone learns captioning and VQA (mini: from scratch; full scale: fine-tuning)."""

from __future__ import annotations

from ...data.shapes import ShapesWorld
from ...models.unified import BLIP3oModel
from .data import choice_rng, examples, pick_question

CAPTION_RATE = 0.2  # share of captioning requests among VQA questions


class UnderstandingTask:
    name = "understanding"

    def __init__(self, model: BLIP3oModel, seed: int = 0, caption_rate: float = CAPTION_RATE):
        self.model, self.seed, self.caption_rate = model, seed, caption_rate
        self.world = ShapesWorld("train", seed)
        model.backbone.set_backbone_trainable(True)

    def modules(self):
        # The queries and projector serve generation only; they stay out of this stage's optimiser.
        return {"backbone": self.model.backbone.model}

    def batch(self, start: int, size: int):
        chosen = examples(self.world, start, size)
        pairs = [pick_question(e, choice_rng(self.seed, start + i), self.caption_rate) for i, e in enumerate(chosen)]
        return [e.image for e in chosen], [q for q, _ in pairs], [a for _, a in pairs]

    def loss(self, batch, generator):
        images, questions, answers = batch
        loss = self.model.understanding_loss(images, questions, answers)
        return loss, {"ce": loss.item()}
