"""GenEval-schema prompts over the ShapesWorld vocabulary: phrasing, sampling, and the 553-prompt sets.

Records use GenEval's exact schema and templates (`prompts/create_prompts.py` of the official repository):
    {"tag": ..., "include": [{"class", "count", "color"?, "position"?: [relation, group index]}],
     "exclude"?: [...], "prompt": "a photo of ..."}
"""

from __future__ import annotations

import random

from .world import (
    COLORS,
    COUNT_WORDS,
    COUNTING_NUMBERS,
    HELDOUT_COLOR_SHAPES,
    RELATIONS,
    SHAPES,
    article,
    check_color,
    check_shape,
    heldout_relation_forms,
    plural,
)

TAGS: tuple[str, ...] = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
# Prompts per tag in GenEval's official 553-prompt evaluation file.
GENEVAL_TAG_COUNTS: dict[str, int] = {
    "single_object": 80,
    "two_object": 99,
    "counting": 80,
    "colors": 94,
    "position": 100,
    "color_attr": 100,
}
GENEVAL_PROMPT_SEED = 43  # the seed of GenEval's own prompt generator
SPLITS: tuple[str, ...] = ("train", "eval", "heldout")


def _a(word: str) -> str:
    return f"{article(word)} {word}"


def make_prompt(record: dict) -> str:
    """GenEval's phrasing for a record's tag and include clauses."""
    tag, inc = record["tag"], record["include"]
    if tag == "single_object":
        return f"a photo of {_a(inc[0]['class'])}"
    if tag == "two_object":
        return f"a photo of {_a(inc[0]['class'])} and {_a(inc[1]['class'])}"
    if tag == "counting":
        return f"a photo of {COUNT_WORDS[inc[0]['count']]} {plural(inc[0]['class'])}"
    if tag == "colors":
        return f"a photo of {_a(inc[0]['color'])} {inc[0]['class']}"
    if tag == "position":
        # "a photo of a A rel a B": B is group 0, A carries the position clause.
        return f"a photo of {_a(inc[1]['class'])} {inc[1]['position'][0]} {_a(inc[0]['class'])}"
    if tag == "color_attr":
        return f"a photo of {_a(inc[0]['color'])} {inc[0]['class']} and {_a(inc[1]['color'])} {inc[1]['class']}"
    raise ValueError(f"unknown tag {tag!r}; GenEval's tags are: {', '.join(TAGS)}")


def record(tag: str, include: list[dict], exclude: list[dict] | None = None) -> dict:
    """A GenEval record with its prompt, keys in the official order."""
    rec: dict = {"tag": tag, "include": include}
    if exclude:
        rec["exclude"] = exclude
    rec["prompt"] = make_prompt(rec)
    return rec


def validate_record(rec: dict) -> dict:
    """Check a record against the schema and the ShapesWorld vocabulary; raise ValueError naming the fault."""
    if not isinstance(rec, dict) or "include" not in rec or not isinstance(rec["include"], list):
        raise ValueError("a GenEval record needs an 'include' list")
    for clause in rec["include"] + rec.get("exclude", []):
        if not isinstance(clause, dict) or "class" not in clause or "count" not in clause:
            raise ValueError(f"each clause needs 'class' and 'count', got {clause!r}")
        check_shape(clause["class"])
        if not isinstance(clause["count"], int) or clause["count"] < 0:
            raise ValueError(f"'count' must be a non-negative integer, got {clause['count']!r}")
        if "color" in clause:
            check_color(clause["color"])
        if "position" in clause:
            relation, group = clause["position"]
            if relation not in RELATIONS:
                raise ValueError(f"unknown relation {relation!r}; known: {', '.join(RELATIONS)}")
            if not isinstance(group, int) or not 0 <= group < len(rec["include"]):
                raise ValueError(f"position group {group!r} is not an include index")
    return rec


class PromptSampler:
    """Draws GenEval records for one split.

    `train` and `eval` never use a held-out colour-shape pair or relation; `heldout` builds the tags that can
    express one (colors, color_attr, position) from held-out combinations only, and the others as `eval`.
    """

    def __init__(self, split: str = "train"):
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; known: {', '.join(SPLITS)}")
        self.split = split
        self.heldout_pairs = sorted(HELDOUT_COLOR_SHAPES)
        self.heldout_relations = sorted(heldout_relation_forms())
        self.seen_pairs = [(c, s) for c in COLORS for s in SHAPES if (c, s) not in HELDOUT_COLOR_SHAPES]
        forbidden = set(self.heldout_relations)
        self.seen_relations = [
            (a, rel, b) for a in SHAPES for b in SHAPES if a != b for rel in RELATIONS if (a, rel, b) not in forbidden
        ]

    def sample(self, tag: str, rng: random.Random, index: int | None = None) -> dict:
        heldout = self.split == "heldout"
        if tag == "single_object":
            shape = SHAPES[index % len(SHAPES)] if index is not None else rng.choice(SHAPES)
            return record(tag, [{"class": shape, "count": 1}])
        if tag == "two_object":
            a, b = rng.sample(SHAPES, 2)
            return record(tag, [{"class": a, "count": 1}, {"class": b, "count": 1}])
        if tag == "counting":
            shape, n = rng.choice(SHAPES), rng.choice(COUNTING_NUMBERS)
            return record(tag, [{"class": shape, "count": n}], [{"class": shape, "count": n + 1}])
        if tag == "colors":
            color, shape = rng.choice(self.heldout_pairs if heldout else self.seen_pairs)
            return record(tag, [{"class": shape, "count": 1, "color": color}])
        if tag == "position":
            a, rel, b = rng.choice(self.heldout_relations if heldout else self.seen_relations)
            return record(tag, [{"class": b, "count": 1}, {"class": a, "count": 1, "position": [rel, 0]}])
        if tag == "color_attr":
            return record(tag, self._color_attr_clauses(rng, heldout))
        raise ValueError(f"unknown tag {tag!r}; GenEval's tags are: {', '.join(TAGS)}")

    def _color_attr_clauses(self, rng: random.Random, heldout: bool) -> list[dict]:
        first = rng.choice(self.heldout_pairs if heldout else self.seen_pairs)
        while True:
            second = rng.choice(self.seen_pairs)
            if second[0] != first[0] and second[1] != first[1]:
                break
        pairs = [first, second]
        rng.shuffle(pairs)
        return [{"class": s, "count": 1, "color": c} for c, s in pairs]


def evaluation_set(split: str = "heldout", seed: int = GENEVAL_PROMPT_SEED) -> list[dict]:
    """553 records with GenEval's per-tag counts, in GenEval's tag order.

    With six classes and eight colours, prompts repeat within a tag (GenEval's 80 COCO classes do not); each
    repeat is scored on its own images, as in GenEval.
    """
    if split == "train":
        raise ValueError("evaluation sets are built from the 'eval' or 'heldout' split")
    sampler = PromptSampler(split)
    rng = random.Random(seed)
    return [sampler.sample(tag, rng, index=i) for tag, n in GENEVAL_TAG_COUNTS.items() for i in range(n)]
