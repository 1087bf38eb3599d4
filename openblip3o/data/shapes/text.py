"""Captions and exact question-answer pairs for a scene, in a closed vocabulary (see `vocabulary()`)."""

from __future__ import annotations

import random
import re
from collections import Counter

from .rules import relative_position
from .scene import Scene, ShapeObject
from .world import COLORS, COUNT_WORDS, PLACE_NAMES, RELATIONS, SHAPES, SIZES, article, heldout_relation_forms, plural

_PLACE_PHRASES = {
    "center": "in the center",
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
}
# The captioning request of understanding training (its answer is the long caption), in words already in the
# vocabulary so that adding it changed no token id.
CAPTION_QUESTION = "what is in the photo?"
TOTAL_COUNT_QUESTION = "how many shapes are there?"
# Questions about relations are asked only where the answer is clear by a wide margin.
CLEAR_RELATION = 0.65


def place_phrase(place: str) -> str:
    return _PLACE_PHRASES.get(place, f"at the {place}")


def _noun_phrase(n: int, words: str, noun: str) -> str:
    if n == 1:
        return f"{article(words or noun)} {words + ' ' if words else ''}{noun}"
    return f"{COUNT_WORDS[n]} {words + ' ' if words else ''}{plural(noun)}"


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _reading_order(scene: Scene) -> list[ShapeObject]:
    return sorted(scene.objects, key=lambda o: (o.cy, o.cx))


def long_caption(scene: Scene) -> str:
    """Every object with size, colour and place, then the count of each class."""
    objects = _reading_order(scene)
    parts = [
        f"{article(o.size)} {o.size} {o.color} {o.shape} {place_phrase(o.place(scene.image_size))}" for o in objects
    ]
    counts = Counter(o.shape for o in objects)
    summary = _join([_noun_phrase(counts[s], "", s) for s in SHAPES if counts[s]])
    noun = "shape" if len(objects) == 1 else "shapes"
    return f"{COUNT_WORDS[len(objects)]} {noun} on a black background: {', '.join(parts)}. in all, {summary}."


def short_caption(scene: Scene) -> str:
    """The objects grouped by colour and class, no sizes or places."""
    groups = Counter((o.color, o.shape) for o in _reading_order(scene))
    return _join([_noun_phrase(n, color, shape) for (color, shape), n in groups.items()])


def vqa_pairs(scene: Scene, rng: random.Random) -> list[dict]:
    """Up to five questions with exact answers: colour, count, total count, shape, relation."""
    objects = list(scene.objects)
    by_shape = Counter(o.shape for o in objects)
    by_color = Counter(o.color for o in objects)
    pairs = []
    unique_shapes = [s for s in SHAPES if by_shape[s] == 1]
    if unique_shapes:
        shape = rng.choice(unique_shapes)
        color = next(o.color for o in objects if o.shape == shape)
        pairs.append({"type": "color", "question": f"what color is the {shape}?", "answer": color})
    pairs.append(named_count_pair(scene, rng.choice(SHAPES)))
    pairs.append({"type": "count", "question": TOTAL_COUNT_QUESTION, "answer": COUNT_WORDS[len(objects)]})
    unique_colors = [c for c in COLORS if by_color[c] == 1]
    if unique_colors:
        color = rng.choice(unique_colors)
        shape = next(o.shape for o in objects if o.color == color)
        pairs.append({"type": "shape", "question": f"what shape is the {color} object?", "answer": shape})
    relation = _relation_question(scene, rng)
    if relation:
        pairs.append(relation)
    return pairs


def named_count_pair(scene: Scene, shape: str) -> dict:
    """"how many <shape>s are there?" with its exact answer."""
    count = sum(o.shape == shape for o in scene.objects)
    return {"type": "count", "question": f"how many {plural(shape)} are there?", "answer": COUNT_WORDS[count]}


def is_named_count(pair: dict) -> bool:
    """Whether a VQA pair counts one shape (not all of them)."""
    return pair["type"] == "count" and pair["question"] != TOTAL_COUNT_QUESTION


def _relation_question(scene: Scene, rng: random.Random) -> dict | None:
    described = Counter((o.color, o.shape) for o in scene.objects)
    nameable = [o for o in scene.objects if described[(o.color, o.shape)] == 1]
    candidates = []
    heldout = heldout_relation_forms()
    for a in nameable:
        for b in nameable:
            if a is b or a.shape == b.shape:
                continue
            clear = relative_position(a.box, b.box, threshold=CLEAR_RELATION)
            for rel in RELATIONS:
                if (a.shape, rel, b.shape) in heldout:
                    continue
                holds = rel in clear
                opposite = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}[rel]
                if holds or opposite in clear:
                    candidates.append((a, rel, b, "yes" if holds else "no"))
    if not candidates:
        return None
    a, rel, b, answer = rng.choice(candidates)
    question = f"is the {a.color} {a.shape} {rel} the {b.color} {b.shape}?"
    return {"type": "relation", "question": question, "answer": answer}


_ARTICLES = {"a", "an", "the"}
_DIGITS = {str(i): w for i, w in enumerate(COUNT_WORDS)}


def normalize_answer(text: str) -> str:
    """Lower case, no punctuation or articles, digits as words: "The 2." -> "two"."""
    words = re.findall(r"[a-z0-9]+", text.lower())
    return " ".join(_DIGITS.get(w, w) for w in words if w not in _ARTICLES)


def vocabulary() -> list[str]:
    """Every word and punctuation mark that captions, questions, answers and prompts can use."""
    words = set(COLORS) | set(SHAPES) | {plural(s) for s in SHAPES} | set(SIZES) | set(COUNT_WORDS)
    words |= {w for row in PLACE_NAMES for place in row for w in place_phrase(place).split()}
    words |= {w for rel in RELATIONS for w in rel.split()}
    words |= set("a an the and on black background in all shape shapes photo of".split())
    words |= set("what color is how many are there object yes no".split())
    return sorted(words) + [",", ".", "?", ":"]
