"""Measurements a training run makes of its own model, with scorers passed in from above.

The scorers (ShapesWorld's detector, the DiT's prompt sensitivity) live in `evaluation`, a layer above training; the
caller that owns both (the CLI, the study runner) hands them to `run_training` as `Scorers`, so training imports
nothing from evaluation. Without them a run trains exactly the same, but skips the generation stage's prompt checks
and the instruct stage's probe (its tags are then weighted uniformly), and says so in its log and summary.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..data.shapes import PromptSampler
from ..data.shapes.prompts import TAGS
from ..data.shapes.rules import evaluate

PROBE_PROMPTS_PER_TAG = 8  # the quick evaluation that weights the instruct set
PROBE_STEPS = 10


@dataclass(frozen=True)
class Scorers:
    detect: Callable  # PIL image -> (detections, ...): ShapesWorld's detector (evaluation.geneval.detector.detect)
    sensitivity: Callable  # (model, pairs, seed=) -> {"prompt_swap", "zero_condition"} (evaluation.condition)
    # PIL image -> the palette colour it is drawn in, or None (evaluation.geneval.detector.foreground_colour)
    colour: Callable | None = None

    def score(self, record: dict, image) -> bool:
        """Whether `image` satisfies the GenEval `record`, by ShapesWorld's exact rule."""
        return evaluate(record, self.detect(image)[0])[0]


def tag_scores(pipe, seed: int, scorers: Scorers) -> dict[str, float]:
    """Per-tag mini GenEval on a few training-split prompts (cheap settings): where the model is weakest."""
    sampler, rng, scores = PromptSampler("train"), random.Random(seed), {}
    pipe.model.eval()
    for tag in TAGS:
        records = [sampler.sample(tag, rng) for _ in range(PROBE_PROMPTS_PER_TAG)]
        images = pipe([r["prompt"] for r in records], generator=[torch.Generator().manual_seed(i) for i in range(len(records))],
                      num_inference_steps=PROBE_STEPS, decoder_num_inference_steps=PROBE_STEPS, progress=False).images
        scores[tag] = sum(scorers.score(r, im) for r, im in zip(records, images)) / len(records)
    return scores
