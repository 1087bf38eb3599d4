"""Joint training (the comparison the paper argues against): backbone, queries and DiT learn together, with the
understanding and generation losses summed on every step."""

from __future__ import annotations

from ...data.sources import DataSource
from .generation import GenerationTask, generator_modules
from .understanding import UnderstandingTask


class JointTask:
    name = "joint"

    def __init__(self, model, seed: int = 0, generation_weight: float = 1.0, short_caption_rate: float = 0.1,
                 understanding_source: DataSource | None = None, generation_source: DataSource | None = None):
        self.understanding = UnderstandingTask(model, seed, source=understanding_source)
        self.generation = GenerationTask(model, seed, short_rate=short_caption_rate, train_backbone=True,
                                         source=generation_source)
        self.model, self.weight = model, generation_weight

    def data_state(self) -> dict:
        return {"understanding": self.understanding.data_state(), "generation": self.generation.data_state()}

    def load_data_state(self, state: dict) -> None:
        self.understanding.load_data_state(state["understanding"])
        self.generation.load_data_state(state["generation"])

    def modules(self):
        return self.understanding.modules() | generator_modules(self.model)

    def batch(self, start: int, size: int):
        return self.understanding.batch(start, size), self.generation.batch(start, size)

    def loss(self, batch, generator):
        understanding, generation = batch
        ce, _ = self.understanding.loss(understanding, generator)
        flow, _ = self.generation.loss(generation, generator)
        return ce + self.weight * flow, {"ce": ce.item(), "flow": flow.item()}
