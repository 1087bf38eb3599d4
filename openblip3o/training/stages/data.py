"""Per-example choices of the stages (which caption, which question), each a pure function of the example's position."""

from __future__ import annotations

import random

from ...data.shapes.text import CAPTION_QUESTION
from ...data.sources import DataSource
from ...models.encoders import to_tensor

CAPTION_STREAM = 7  # per-example choices use their own generator stream, apart from the scene's


def choice_rng(seed: int, index: int) -> random.Random:
    return random.Random((seed << 36) + (index << 4) + CAPTION_STREAM)


def pick_caption(example, rng: random.Random, short_rate: float, prompt_rate: float) -> str:
    """A long caption mostly; a short one `short_rate` of the time; the GenEval prompt `prompt_rate`."""
    draw = rng.random()
    if draw < short_rate:
        return example.annotation["captions"]["short"]
    if draw < short_rate + prompt_rate:
        return example.annotation["prompt"]
    return example.annotation["captions"]["long"]


def pick_question(example, rng: random.Random, caption_rate: float) -> tuple[str, str]:
    """A VQA pair of the scene, or the captioning request with the long caption as answer."""
    if rng.random() < caption_rate or not example.annotation["vqa"]:
        return CAPTION_QUESTION, example.annotation["captions"]["long"]
    qa = rng.choice(example.annotation["vqa"])
    return qa["question"], qa["answer"]


def pick_follow_ups(example, rng: random.Random, first: tuple[str, str], turns: int) -> list[tuple[str, str]]:
    """Up to `turns - 1` more of the scene's VQA pairs (not the first, in a random order) to ask after it.

    A captioning row gets none. Drawn after `pick_question`, from the same generator, so `turns == 1` leaves every
    earlier choice as it was.
    """
    rest = [(qa["question"], qa["answer"]) for qa in example.annotation["vqa"]
            if (qa["question"], qa["answer"]) != first]
    if turns <= 1 or first[0] == CAPTION_QUESTION or not rest:
        return []
    return rng.sample(rest, min(turns - 1, len(rest)))


def image_batch(batch_examples, size: int):
    """(B, 3, size, size) floats in [0, 1]."""
    return to_tensor([e.image for e in batch_examples], size)


class SourceState:
    """The engine's resume hooks for a task reading `self.source` (see engine.py)."""

    source: DataSource

    def data_state(self) -> dict:
        return self.source.state_dict()

    def load_data_state(self, state: dict) -> None:
        self.source.load_state_dict(state)
