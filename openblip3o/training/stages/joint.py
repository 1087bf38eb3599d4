"""Joint training (the comparison the paper argues against): backbone, queries and DiT learn together, with the
understanding and generation losses summed on every step."""

from __future__ import annotations

from .generation import GenerationTask, _QueryHolder
from .understanding import UnderstandingTask


class JointTask:
    name = "joint"

    def __init__(self, model, seed: int = 0, generation_weight: float = 1.0, short_caption_rate: float = 0.1):
        self.understanding = UnderstandingTask(model, seed)
        self.generation = GenerationTask(model, seed, short_rate=short_caption_rate, train_backbone=True)
        self.model, self.weight = model, generation_weight

    def modules(self):
        return self.understanding.modules() | {"queries": _QueryHolder(self.model.backbone),
                "projector": self.model.backbone.projector,
                "condition_norm": self.model.backbone.condition_norm, "generator": self.model.generator}

    def batch(self, start: int, size: int):
        return self.understanding.batch(start, size), self.generation.batch(start, size)

    def loss(self, batch, generator):
        understanding, generation = batch
        ce, _ = self.understanding.loss(understanding, generator)
        flow, _ = self.generation.loss(generation, generator)
        return ce + self.weight * flow, {"ce": ce.item(), "flow": flow.item()}
