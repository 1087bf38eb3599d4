"""The training-time prompt check: does the generator follow its prompt, or draw the same image whatever it says?

Every `sample_every` steps of generation training (and at its end) the stage measures, on the model as it is:
  - `prompt_swap` / `zero_condition`: how much the DiT's output moves when one word of the prompt changes, and
    when the condition is zeroed, from the same noise (`scorers.sensitivity`: evaluation.condition's);
  - `colour_accuracy`: colour prompts of seen colour-shape pairs drawn at one seed, decoded and scored by rule: a
    prompt-blind model draws one image for all of them and scores about 1 / len(CHECK_COLOURS);
  - `drawn_colour_accuracy` (with `scorers.colour`): the share of those images drawn in the asked colour, whatever
    their shape: colour words apart from shape fidelity.
  - `attribute_swap`: the DiT's output change between prompts of the same words with two objects' colours exchanged
    ("a red cross and a blue star" / "a blue cross and a red star"); near 0 beside `prompt_swap`, the DiT reads its
    prompt as a bag of words and cannot bind colours to objects (`openblip3o eval binding` measures it at length:
    the model shipped on 2026-12-04 had 0.002 against a one-colour change's 0.18);
  - `attribute_change` / `binding_ratio`: the change when one of those colours is replaced instead, and the swap as a
    share of it (a model that binds moves about as much for either; a bag-of-words reader near 0).
A run whose condition stays prompt-blind says so in its log and summary (`prompt_blind: true`) instead of finishing
silently (the model shipped on 2026-12-02 had prompt_swap 0.0013 and drew one image per seed for every prompt).
The scorers come from the caller (`checks.Scorers`): training imports nothing from evaluation.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..data.shapes.world import COLORS
from .checks import Scorers

# Prompt pairs that differ in one word (colour, shape, count, relation), for the generator's sensitivity.
CHECK_PAIRS: tuple[tuple[str, str], ...] = (
    ("a photo of a red circle", "a photo of a blue circle"),
    ("a photo of a green square", "a photo of a yellow square"),
    ("a photo of a red circle", "a photo of a red square"),
    ("a photo of a blue star", "a photo of a blue triangle"),
    ("a photo of two stars", "a photo of three stars"),
    ("a photo of a circle", "a photo of four circles"),
    ("a photo of a circle left of a cross", "a photo of a circle right of a cross"),
    ("a photo of a square above a star", "a photo of a square below a star"),
)
# Prompt pairs of the same words, two objects' colours exchanged: binding, not words.
BINDING_PAIRS: tuple[tuple[str, str], ...] = (
    ("a photo of a red cross and a blue star", "a photo of a blue cross and a red star"),
    ("a photo of a green circle and a yellow square", "a photo of a yellow circle and a green square"),
    ("a photo of a purple triangle and an orange diamond", "a photo of an orange triangle and a purple diamond"),
    ("a photo of a white star and a pink circle", "a photo of a pink star and a white circle"),
)
# The first prompt of each BINDING_PAIRS pair with one colour replaced: a word change on the same prompts, the scale
# the attribute swap is read against.
CHANGE_PAIRS: tuple[tuple[str, str], ...] = (
    ("a photo of a red cross and a blue star", "a photo of a green cross and a blue star"),
    ("a photo of a green circle and a yellow square", "a photo of a green circle and a purple square"),
    ("a photo of a purple triangle and an orange diamond", "a photo of a white triangle and an orange diamond"),
    ("a photo of a white star and a pink circle", "a photo of a white star and a red circle"),
)
CHECK_COLOURS: tuple[str, ...] = COLORS  # every colour of the world, each once
CHECK_SHAPE = "circle"  # every colour is seen with circles in training
CHECK_SEED = 0
CHECK_STEPS = 20  # DiT and decoder sampling steps: enough to read colour and shape, a few seconds in all
PROMPT_BLIND_SWAP = 0.02  # below this relative change the DiT's output does not depend on the prompt
CHECK_FILE = "prompt_checks.jsonl"


def colour_records(shape: str = CHECK_SHAPE) -> list[dict]:
    """GenEval `colors` records, one per CHECK_COLOURS entry."""
    from ..data.shapes.prompts import record

    return [record("colors", [{"class": shape, "count": 1, "color": colour}]) for colour in CHECK_COLOURS]


@torch.no_grad()
def colour_accuracy(model, records: list[dict], scorers: Scorers, seed: int = CHECK_SEED, steps: int = CHECK_STEPS):
    """Share of `records` drawn correctly at one shared seed (scored by rule), and the images (B, 3, H, W)."""
    from ..utils.images import to_pil

    gens = [torch.Generator().manual_seed(seed) for _ in records]
    tokens = model.sample_tokens([r["prompt"] for r in records], generator=gens, num_inference_steps=steps)
    images = model.decode(tokens, generator=gens, num_inference_steps=steps)
    hits = [scorers.score(r, im) for r, im in zip(records, to_pil(images))]
    return sum(hits) / len(hits), images


def prompt_check(model, step: int, scorers: Scorers, out_dir: str | Path | None = None, log=print) -> dict:
    """Measure the generator's prompt-following now; append a row to out_dir/CHECK_FILE and log a line."""
    was_training = model.training
    model.eval()
    try:
        sensitivity = scorers.sensitivity(model, list(CHECK_PAIRS), seed=CHECK_SEED)
        binding = scorers.sensitivity(model, list(BINDING_PAIRS), seed=CHECK_SEED)["prompt_swap"]
        change = scorers.sensitivity(model, list(CHANGE_PAIRS), seed=CHECK_SEED)["prompt_swap"]
        records = colour_records()
        accuracy, images = colour_accuracy(model, records, scorers)
    finally:
        model.train(was_training)
    ratio = binding / change if change > 0 else 0.0
    row = {"step": step, **sensitivity, "attribute_swap": binding, "attribute_change": change,
           "binding_ratio": ratio, "colour_accuracy": accuracy,
           "prompt_blind": sensitivity["prompt_swap"] < PROMPT_BLIND_SWAP}
    drawn = ""
    if scorers.colour is not None:
        from ..utils.images import to_pil

        hits = [scorers.colour(im) == r["include"][0]["color"] for r, im in zip(records, to_pil(images))]
        row["drawn_colour_accuracy"] = sum(hits) / len(hits)
        drawn = f", drawn colour {row['drawn_colour_accuracy']:.2f}"
    if out_dir is not None:
        with (Path(out_dir) / CHECK_FILE).open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(row) + "\n")
    verdict = "PROMPT-BLIND: the output does not depend on the prompt" if row["prompt_blind"] else "follows the prompt"
    log(f"prompt check at step {step}: prompt_swap {row['prompt_swap']:.4f}, zero_condition "
        f"{row['zero_condition']:.4f}, attribute_swap {binding:.4f} ({ratio:.1%} of a colour change), "
        f"colour accuracy {accuracy:.2f} by rule{drawn} ({verdict})")
    return row
