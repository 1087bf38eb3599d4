"""`understanding.count_present_rate`: "how many <shape>s?" is asked about shapes the image holds as configured."""

import random
from dataclasses import replace

import pytest
import torch

from openblip3o.data.shapes import ShapesWorld
from openblip3o.data.shapes.text import COUNT_WORDS, is_named_count
from openblip3o.data.shapes.world import SHAPES, plural
from openblip3o.inference.pipeline import BLIP3oPipeline
from openblip3o.training.config import UnderstandingMix
from openblip3o.training.stages.data import count_questions
from openblip3o.training.stages.understanding import UnderstandingTask
from tiny import tiny_config

WORLD = ShapesWorld("train", 0)


def _named(pairs):
    [named] = [qa for qa in pairs if is_named_count(qa)]
    return named


def _asked_count(example, question):
    [shape] = [s for s in SHAPES if plural(s) == question.split()[2]]  # "how many crosses are there?"
    return sum(o.shape == shape for o in example.scene.objects)


@pytest.mark.parametrize("rate", [0.0, 0.5, 1.0])
def test_named_count_questions_are_about_present_shapes_at_the_configured_rate(rate):
    examples = [WORLD[i] for i in range(400)]
    rng = random.Random(0)
    present = 0
    for example in examples:
        pairs = count_questions(example, rng, rate)
        others = [qa for qa in pairs if not is_named_count(qa)]
        assert others == [qa for qa in example.annotation["vqa"] if not is_named_count(qa)]  # the rest as annotated
        named = _named(pairs)
        count = _asked_count(example, named["question"])
        assert named["answer"] == COUNT_WORDS[count]  # the answer stays exact
        present += count > 0
    if rate == 0.0:
        assert [count_questions(e, rng, 0.0) for e in examples] == [e.annotation["vqa"] for e in examples]
        assert present / len(examples) < 0.3  # as annotated: mostly about a shape the image lacks
    else:
        assert abs(present / len(examples) - rate) < 0.06


def test_a_scene_without_objects_is_a_clear_error():
    example = replace(WORLD[0], scene=None)
    with pytest.raises(ValueError, match="count_present_rate"):
        count_questions(example, random.Random(0), 0.5)


def test_the_understanding_batches_ask_about_present_shapes():
    torch.manual_seed(0)
    model = BLIP3oPipeline.from_preset("mini", tiny_config()).model
    asked = {}
    for rate in (0.0, 1.0):
        mix = UnderstandingMix(text_rows=0.0, caption_rate=0.0, turns=5, count_present_rate=rate)
        _, questions, answers, _, _, follow_ups = UnderstandingTask(model, seed=0, mix=mix).batch(0, 32)
        turns = [(q, a) for q, a, more in zip(questions, answers, follow_ups) for q, a in [(q, a), *more]]
        asked[rate] = [a for q, a in turns if q.startswith("how many") and q != "how many shapes are there?"]
    assert asked[0.0].count("zero") > len(asked[0.0]) / 2
    assert len(asked[1.0]) == len(asked[0.0]) and "zero" not in asked[1.0]
