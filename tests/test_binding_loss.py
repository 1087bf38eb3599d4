"""The binding loss: negatives with the caption's words bound differently, the hinge, and one word-dropout draw."""

import random
import re

import pytest
import torch

from openblip3o.config import ConfigError, ObjectiveConfig
from openblip3o.data.shapes import ShapesWorld
from openblip3o.data.shapes.negatives import binding_negative
from openblip3o.inference.pipeline import BLIP3oPipeline
from openblip3o.objectives.flow_matching import BINDING_MARGIN, FlowMatching
from openblip3o.training.stages.generation import GenerationTask
from tiny import tiny_config


def content_words(caption: str) -> set:
    """The caption's words other than articles, shapes reduced to their singular (a plural shape keeps its number in
    a negative, so a count moves with its shape: the words, not their multiplicities, are kept)."""
    words = [w[:-2] if w.endswith("sses") else w[:-1] if w.endswith("s") and w[:-1] in ("circle", "square", "triangle",
             "star", "diamond") else w for w in re.findall(r"[a-z]+", caption)]
    return {w for w in words if w not in ("a", "an")}


@pytest.mark.parametrize("caption, negatives", [
    ("a photo of a red cross and a blue star", {"a photo of a blue cross and a red star",
                                                "a photo of a red star and a blue cross"}),
    ("a photo of a cross left of a star", {"a photo of a star left of a cross"}),
    ("a photo of a green square and an orange diamond", {"a photo of an orange square and a green diamond",
                                                         "a photo of a green diamond and an orange square"}),
    ("two purple crosses, a white circle and a red cross", {"two white crosses, a purple circle and a red cross",
                                                            "two purple circles, a white cross and a red circle"}),
])
def test_negatives_exchange_two_colours_or_two_shapes_everywhere(caption, negatives):
    seen = {binding_negative(caption, random.Random(seed)) for seed in range(40)}
    assert seen == negatives  # either kind where both are possible, articles and plurals fixed
    for negative in seen:
        assert negative != caption and content_words(negative) == content_words(caption)  # the same words


@pytest.mark.parametrize("caption", ["a photo of a red circle", "a photo of four crosses", "a photo of two stars",
                                     "two shapes on a black background: a small red star, a large red star."])
def test_a_caption_with_nothing_to_exchange_has_no_negative(caption):
    assert binding_negative(caption, random.Random(0)) is None


def test_the_worlds_captions_get_negatives_of_their_own_words():
    world, rng, made = ShapesWorld("train", 0), random.Random(0), 0
    for index in range(60):
        annotation = world[index].annotation
        for caption in (annotation["prompt"], annotation["captions"]["short"], annotation["captions"]["long"]):
            negative = binding_negative(caption, rng)
            if negative is not None:
                made += 1
                assert negative != caption and content_words(negative) == content_words(caption)
    assert made > 60


def reads_condition(x_t, timestep, cond, mask):
    """A toy DiT: the noise-free velocity target for x0 = 0 (x_t / sigma) plus the condition's first channel."""
    sigma = (timestep / 1000.0).view(-1, 1, 1, 1)
    return x_t / sigma + cond[:, :1, :1].view(-1, 1, 1, 1)


def test_binding_hinge_asks_the_caption_to_explain_the_image_better_than_its_negative():
    objective = FlowMatching(ObjectiveConfig(condition_dropout=0.0))
    x0, pairs = torch.zeros(4, 2, 3, 3), torch.tensor([0, 2])
    cond = torch.zeros(4, 5, 6)  # the caption's condition: exact
    right = torch.full((2, 5, 6), 0.5)  # negatives that explain it worse: no hinge
    wrong = torch.zeros(2, 5, 6)  # negatives that explain it as well: hinge = margin * error = 0
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    flow, hinge = objective.binding_loss(reads_condition, x0, cond, None, right, None, pairs, gen(), max_sigma=1.0)
    assert flow.item() == pytest.approx(0.0, abs=1e-8) and hinge.item() == 0.0
    worse = torch.full((4, 5, 6), 0.3)  # now the caption is off by 0.3 and the negative by 0
    flow, hinge = objective.binding_loss(reads_condition, x0, worse, None, wrong, None, pairs, gen(), max_sigma=1.0)
    assert flow.item() == pytest.approx(0.09, rel=1e-4)
    assert hinge.item() == pytest.approx(0.09 * (1 + BINDING_MARGIN), rel=1e-4)
    # the flow part is `loss` itself: the same sigmas, noise and dropout from one generator
    assert flow.item() == pytest.approx(objective.loss(reads_condition, x0, worse, None, gen()).item(), rel=1e-6)
    # rows too noisy to tell objects apart, or whose condition was dropped, are not asked
    _, none_asked = objective.binding_loss(reads_condition, x0, worse, None, wrong, None, pairs, gen(), max_sigma=0.0)
    assert none_asked.item() == 0.0
    dropped = FlowMatching(ObjectiveConfig(condition_dropout=1.0 - 1e-9))
    _, none_kept = dropped.binding_loss(reads_condition, x0, worse, None, wrong, None, pairs, gen(), max_sigma=1.0)
    assert none_kept.item() == 0.0


def test_caption_and_negative_share_one_word_dropout_draw():
    torch.manual_seed(0)
    model = BLIP3oPipeline.from_preset("mini", tiny_config()).model.train()
    model.backbone.cfg.condition_word_dropout = 0.5
    keep = model.backbone.word_keep(32)
    assert keep.shape == (32, 1) and 4 < int(keep.sum()) < 28
    prompts = ["a photo of a red cross and a blue star"] * 32
    cond, mask = model.backbone.condition(prompts, word_keep=keep)
    words = cond.shape[1] - model.backbone.num_queries
    assert torch.equal(mask[:, :words].sum(1) > 0, keep[:, 0])  # exactly the rows given are hidden
    model.eval()
    assert model.backbone.word_keep(32) is None  # inference hides nothing


def test_generation_task_adds_the_hinge_when_asked_and_keeps_its_captions():
    torch.manual_seed(0)
    model = BLIP3oPipeline.from_preset("mini", tiny_config()).model.train()
    with pytest.raises(ValueError, match="generation_binding_weight"):
        GenerationTask(model, seed=0, binding_weight=-1.0)
    plain, bound = GenerationTask(model, seed=0).batch(0, 8), GenerationTask(model, seed=0, binding_weight=1.0)
    batch = bound.batch(0, 8)
    assert len(plain) == 2 and len(batch) == 3 and batch[1] == plain[1]  # the same captions, negatives beside
    assert any(n is not None for n in batch[2])
    loss, logs = bound.loss(batch, torch.Generator().manual_seed(0))
    assert set(logs) == {"flow", "binding"} and loss.item() == pytest.approx(logs["flow"] + logs["binding"], rel=1e-5)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.generator.parameters())


def test_binding_loss_needs_flow_matching():
    model = BLIP3oPipeline.from_preset("mini", tiny_config(objective={"name": "mse"})).model.train()
    with pytest.raises(ConfigError, match="flow-matching"):
        model.generation_binding_losses(torch.zeros(1, 3, 32, 32), ["a red cross and a blue star"],
                                        ["a blue cross and a red star"])
