"""Where along the generation chain is a prompt's object lost: in the DiT's tokens, or in the decoder's pixels?

For single-object prompts of every seen colour-shape pair ("a photo of a red square", ...), at seeds 0..S-1:

- tokens: the DiT's sampled target tokens, read by per-token linear probes fitted on the true target tokens of
  `num` training scenes (classes: background + each shape; background + each colour, ShapesWorld's exact
  per-token labels). The object the DiT drew, in target space, is the majority class over the tokens the shape
  probe does not call background; `shape` / `color` are the shares of prompts whose majority is the prompt's word.
- image: the same tokens decoded to pixels and read by the ShapesWorld detector. `shape`: some detected object has
  the prompt's shape; `color`: the foreground is drawn in the prompt's colour; `rule`: GenEval's verdict (exactly
  one object, of that shape and colour).

tokens high and image low: the decoder does not draw what the tokens say (their footprint is off the manifold it
was trained on); tokens low too: the DiT (or its condition: `eval condition`) is where the word is lost.
Measured 2026-12-04 on the mini model of that morning, seed 0: tokens shape 1.00, colour 1.00; image shape 0.21,
colour 1.00, rule 0.21. The DiT named the right shape in every sample; the decoder drew its rough footprint as a blob
that the detector read as a circle. The model shipped that evening (decoder fine-tuned with
`decoder_condition_noise: 2.0`, the DiT trained longer): image shape 0.79 over 2 seeds, tokens 1.00.
"""

from __future__ import annotations

import torch

from ..data.shapes import COLORS, HELDOUT_COLOR_SHAPES, SHAPES, ShapesWorld
from ..data.shapes.prompts import record
from ..data.shapes.rules import evaluate
from ..utils.images import to_pil
from .condition import _eval_mode, _model, fit_probe
from .geneval.detector import detect, foreground_colour
from .target_probe import KINDS, object_tokens

WORDS = {"shape": SHAPES, "color": COLORS}


def single_object_records() -> list[dict]:
    """GenEval `colors` records of one object, for every seen (colour, shape) pair, colour-major."""
    return [record("colors", [{"class": shape, "count": 1, "color": color}])
            for color in COLORS for shape in SHAPES if (color, shape) not in HELDOUT_COLOR_SHAPES]


@torch.no_grad()
def token_probes(encoder, num: int = 1000, seed: int = 0) -> dict:
    """{kind: predict} per-token probes on the DiT's target space: predict((T, D) tokens) -> (T,) class indices,
    0 = background, k = the k-th word of WORDS[kind] (+1)."""
    world = ShapesWorld("train", seed)
    features, labels = object_tokens(encoder, [world[i] for i in range(num)], with_background=True)
    return {kind: fit_probe(features, labels[kind], len(WORDS[kind]) + 1) for kind in KINDS}


def token_words(tokens: torch.Tensor, probes: dict) -> dict[str, str | None]:
    """One sample's (N, D) target tokens -> {kind: the majority word over its object tokens} (None: no object)."""
    shape_classes = probes["shape"](tokens)
    covered = shape_classes > 0
    if not covered.any():
        return dict.fromkeys(KINDS)
    words = {}
    for kind in KINDS:
        classes = shape_classes if kind == "shape" else probes[kind](tokens)
        classes = classes[covered & (classes > 0)]
        words[kind] = WORDS[kind][int(torch.mode(classes).values) - 1] if len(classes) else None
    return words


@torch.no_grad()
def chain_report(pipe_or_model, seeds: int = 2, num: int = 1000, probe_seed: int = 0) -> dict:
    """{"tokens": {"shape", "color"}, "image": {"shape", "color", "rule"}, "prompts", "seeds", "probe_scenes"}:
    shares of single-object prompts (every seen colour-shape pair, at seeds 0..seeds-1) right at each link."""
    if seeds < 1 or num < 1:
        raise ValueError("seeds and num must be at least 1")
    model = _model(pipe_or_model)
    records = single_object_records()
    prompts = [r["prompt"] for r in records]
    totals = {"tokens": dict.fromkeys(KINDS, 0), "image": dict.fromkeys((*KINDS, "rule"), 0)}
    with _eval_mode(model):
        probes = token_probes(model.target_encoder, num, probe_seed)
        for seed in range(seeds):
            generators = [torch.Generator().manual_seed(seed) for _ in records]
            tokens = model.sample_tokens(prompts, generator=generators)
            target = model.target_encoder.normalize(tokens)
            images = to_pil(model.decode(tokens, generator=[torch.Generator().manual_seed(seed) for _ in records]))
            for rec, row, image in zip(records, target, images):
                want = rec["include"][0]
                drawn = token_words(row, probes)
                totals["tokens"]["shape"] += drawn["shape"] == want["class"]
                totals["tokens"]["color"] += drawn["color"] == want["color"]
                detections = detect(image)[0]
                totals["image"]["shape"] += any(d.shape == want["class"] for d in detections)
                totals["image"]["color"] += foreground_colour(image) == want["color"]
                totals["image"]["rule"] += evaluate(rec, detections)[0]
    count = seeds * len(records)
    shares = {link: {key: value / count for key, value in values.items()} for link, values in totals.items()}
    return shares | {"prompts": len(records), "seeds": seeds, "probe_scenes": num}


def format_chain(report: dict) -> str:
    tokens, image = report["tokens"], report["image"]
    return "\n".join([
        f"{'':<8}{'shape':>8}{'colour':>8}{'rule':>8}",
        f"{'tokens':<8}{tokens['shape']:>8.3f}{tokens['color']:>8.3f}{'':>8}",
        f"{'image':<8}{image['shape']:>8.3f}{image['color']:>8.3f}{image['rule']:>8.3f}",
        f"({report['prompts']} single-object prompts x {report['seeds']} seeds; token probes fitted on "
        f"{report['probe_scenes']} training scenes)",
    ])
