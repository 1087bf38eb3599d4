"""Per-example choices of the stages (which caption, which question), each a pure function of the example's position."""

from __future__ import annotations

import random
from collections import Counter

from ...data.shapes.text import CAPTION_QUESTION, is_named_count, named_count_pair
from ...data.shapes.world import SHAPES
from ...data.sources import DataSource
from ...models.encoders import to_tensor

CAPTION_STREAM = 7  # per-example choices use their own generator stream, apart from the scene's
COUNT_STREAM = 11  # the redrawn count question's (`count_questions`), apart from the other choices


def choice_rng(seed: int, index: int, stream: int = CAPTION_STREAM) -> random.Random:
    return random.Random((seed << 36) + (index << 4) + stream)


def count_questions(example, rng: random.Random, present_rate: float) -> list[dict]:
    """The example's VQA pairs, its "how many <shape>s?" question redrawn (present_rate > 0): about a shape the
    scene holds with probability `present_rate`, else about one it lacks. 0 = the pairs as annotated, where the shape
    is drawn from all six, so about 4 in 5 such questions are answered "zero"."""
    pairs = example.annotation["vqa"]
    if present_rate <= 0:
        return pairs
    if example.scene is None:
        raise ValueError(f"understanding.count_present_rate needs each example's ShapesWorld objects; example "
                         f"{example.key} has none: set it to 0 for other data")
    held = Counter(o.shape for o in example.scene.objects)
    present, absent = [s for s in SHAPES if held[s]], [s for s in SHAPES if not held[s]]
    pool = present if (rng.random() < present_rate and present) or not absent else absent
    shape = rng.choice(pool)
    return [named_count_pair(example.scene, shape) if is_named_count(qa) else qa for qa in pairs]


def pick_caption(example, rng: random.Random, short_rate: float, prompt_rate: float) -> str:
    """A long caption mostly; a short one `short_rate` of the time; the GenEval prompt `prompt_rate`."""
    draw = rng.random()
    if draw < short_rate:
        return example.annotation["captions"]["short"]
    if draw < short_rate + prompt_rate:
        return example.annotation["prompt"]
    return example.annotation["captions"]["long"]


def pick_question(example, rng: random.Random, caption_rate: float, vqa: list[dict] | None = None) -> tuple[str, str]:
    """A VQA pair of the scene (from `vqa`, default its annotation's), or the captioning request with the long
    caption as answer."""
    vqa = example.annotation["vqa"] if vqa is None else vqa
    if rng.random() < caption_rate or not vqa:
        return CAPTION_QUESTION, example.annotation["captions"]["long"]
    qa = rng.choice(vqa)
    return qa["question"], qa["answer"]


def pick_follow_ups(example, rng: random.Random, first: tuple[str, str], turns: int,
                    vqa: list[dict] | None = None) -> list[tuple[str, str]]:
    """Up to `turns - 1` more of the scene's VQA pairs (from `vqa`, default its annotation's; not the first, in a
    random order) to ask after it.

    A captioning row gets none. Drawn after `pick_question`, from the same generator, so `turns == 1` leaves every
    earlier choice as it was.
    """
    vqa = example.annotation["vqa"] if vqa is None else vqa
    rest = [(qa["question"], qa["answer"]) for qa in vqa
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
