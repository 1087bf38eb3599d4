"""Place words against relation words: does the DiT put an object where a caption says, and where a relation says?

    python bench/place_words.py [MODEL] [--seeds 4] [--json]

Three same-seed checks, forward passes only (≈2 min on 2 cores):
  * places: one object in the long-caption form ("one shape on a black background: a small red circle on the left.
    in all, a circle."), the same seed for the four places; prints the mean centre of the detected object per place
    (64 px images: a model that ignores the place word draws every place at the same centre);
  * relations: GenEval's form ("a photo of a circle left of a square") for six shape pairs and the four relations;
    among the images where both shapes are detected, the share set apart along the relation's axis (x for left /
    right) more than along the other, and the share whose first object lies on the named side of the second (0.5 for
    a model that ignores which object the relation puts where; eval failures' `when_drawn` for position says the same
    on the benchmark);
  * relations expanded: the same relations rewritten by rule into the long caption's per-object places ("two shapes on
    a black background: a small red circle on the left, a small blue square on the right. in all, ...") — an oracle
    of what a language model that expands the prompt would hand the DiT, not something the pipeline does.
Measured 2026-12-05 on the shipped mini model (4 seeds): left / right mean x 15.7 / 51.7, top / bottom mean y 13.3 /
49.9 (24 of 24 detected each); relations: of 55 images with both drawn, apart along the axis 0.782, named side
0.455; expanded: of 45, 1.000 and 0.556. One object goes where its phrase says; two go to the two places named,
but which goes where is a coin toss: the DiT does not bind a place (or a colour) to its object.
"""
import argparse
import json

import numpy as np
import torch

from openblip3o.evaluation.geneval.detector import detect
from openblip3o.inference.pipeline import BLIP3oPipeline

PLACES = ("on the left", "on the right", "at the top", "at the bottom")
OBJECTS = (("red", "circle"), ("blue", "square"), ("green", "triangle"), ("yellow", "star"), ("white", "cross"),
           ("pink", "diamond"))
# (relation, axis of the box (0 = x, 1 = y), the sign of first-minus-second centre along it when the relation holds)
RELATIONS = (("left of", 0, -1), ("right of", 0, 1), ("above", 1, -1), ("below", 1, 1))
# relation -> (the place phrase of the object that comes first in reading order, the other's)
EXPANDED_PLACES = {"left of": ("on the left", "on the right"), "right of": ("on the left", "on the right"),
                   "above": ("at the top", "at the bottom"), "below": ("at the top", "at the bottom")}
EXPANDED_COLOURS = ("red", "blue")  # any colours: position prompts name none, long captions always do
PAIRS = (("circle", "square"), ("star", "triangle"), ("cross", "diamond"), ("square", "star"),
         ("triangle", "circle"), ("diamond", "cross"))


def _draw(pipe, prompts: list[str], seed: int):
    generators = [torch.Generator().manual_seed(seed) for _ in prompts]  # one noise for every prompt
    return pipe(prompts, generator=generators, progress=False).images


def _centre(box, axis: int) -> float:
    return (box[axis] + box[axis + 2]) / 2


def places(pipe, seeds: int) -> dict:
    centres: dict[str, list] = {p: [] for p in PLACES}
    for seed in range(seeds):
        prompts = [(p, f"one shape on a black background: a small {c} {s} {p}. in all, a {s}.")
                   for c, s in OBJECTS for p in PLACES]
        for (place, _), image in zip(prompts, _draw(pipe, [text for _, text in prompts], seed)):
            detections = detect(image)[0]
            if detections:
                box = max(detections, key=lambda d: (d.box[2] - d.box[0]) * (d.box[3] - d.box[1])).box
                centres[place].append((_centre(box, 0), _centre(box, 1)))
    return {p: {"x": float(np.mean([c[0] for c in v])) if v else None,
                "y": float(np.mean([c[1] for c in v])) if v else None,
                "detected": len(v), "images": seeds * len(OBJECTS)} for p, v in centres.items()}


def expanded(relation: str, a: str, b: str) -> str:
    """GenEval's "a photo of a A <relation> a B" as the long caption of a scene where it holds (reading order)."""
    first, second = EXPANDED_PLACES[relation]
    ordered = [(a, EXPANDED_COLOURS[0]), (b, EXPANDED_COLOURS[1])]
    if relation in ("right of", "below"):  # B is read first: it is the left (top) one
        ordered.reverse()
    (s1, c1), (s2, c2) = ordered
    return (f"two shapes on a black background: a small {c1} {s1} {first}, a small {c2} {s2} {second}. "
            f"in all, a {s1} and a {s2}.")


def relations(pipe, seeds: int, expand: bool = False) -> dict:
    right = on_axis = drawn = 0
    for seed in range(seeds):
        for relation, axis, sign in RELATIONS:
            prompts = [expanded(relation, a, b) if expand else f"a photo of a {a} {relation} a {b}" for a, b in PAIRS]
            for (a, b), image in zip(PAIRS, _draw(pipe, prompts, seed)):
                boxes = {d.shape: d.box for d in detect(image)[0]}
                if a in boxes and b in boxes:
                    drawn += 1
                    gap = [_centre(boxes[a], k) - _centre(boxes[b], k) for k in (0, 1)]
                    right += int(np.sign(gap[axis]) == sign)
                    on_axis += int(abs(gap[axis]) > abs(gap[1 - axis]))  # apart along the relation's axis
    return {"named_side": right / drawn if drawn else None, "named_axis": on_axis / drawn if drawn else None,
            "both_drawn": drawn, "images": seeds * len(RELATIONS) * len(PAIRS)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", default="mini")
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    pipe = BLIP3oPipeline.from_pretrained(args.model)
    result = {"places": places(pipe, args.seeds), "relations": relations(pipe, args.seeds),
              "relations_expanded": relations(pipe, args.seeds, expand=True)}
    if args.json:
        print(json.dumps(result))
        return
    for place, row in result["places"].items():
        where = "–" if row["x"] is None else f"x {row['x']:.1f}, y {row['y']:.1f}"
        print(f"{place:<14} mean centre {where} ({row['detected']} / {row['images']} detected)")
    for key in ("relations", "relations_expanded"):
        rel = result[key]
        if rel["both_drawn"] == 0:
            print(f"{key}: no image with both shapes drawn")
            continue
        print(f"{key}: of {rel['both_drawn']} images with both shapes drawn, apart along the relation's axis "
              f"{rel['named_axis']:.3f}, the first object on the named side {rel['named_side']:.3f}")


if __name__ == "__main__":
    main()
