"""Which objects a question is about: the tokens an answer has to look at.

"what color is the star?" is about the star, "what shape is the green object?" about the green one, "how many
crosses are there?" about the crosses, "is the red circle left of the blue star?" about the red circle first and
the blue star second. The first noun phrase (before any relation word) names them by colour and / or shape; "how
many shapes are there?" names no attribute and so no target. Exact, from ShapesWorld's own question forms
(`text.vqa_pairs`).
"""

from __future__ import annotations

import re

import numpy as np

from .render import token_owners
from .scene import Scene
from .world import COLORS, SHAPES, plural

RELATION_WORDS = re.compile(r"\b(left of|right of|above|below)\b")
_SHAPE_WORDS = {word: shape for shape in SHAPES for word in (shape, plural(shape))}


PHRASES = ("first", "relation_first", "relation_second")  # which noun phrase a pointer looks for


def named_objects(question: str, scene: Scene, phrase: str = "first") -> list[int]:
    """Indices of the scene's objects a noun phrase of the question names ([] when it names no attribute).

    phrase: "first" (before any relation word), or, for relation questions only ([] for any other),
    "relation_first" / "relation_second" (the phrase before / after the relation word)."""
    words = named_words(question, phrase)
    colors = {w for w in words if w in COLORS}
    shapes = {_SHAPE_WORDS[w] for w in words if w in _SHAPE_WORDS}
    if not colors and not shapes:
        return []
    return [i for i, o in enumerate(scene.objects)
            if (not colors or o.color in colors) and (not shapes or o.shape in shapes)]


def named_words(question: str, phrase: str = "first") -> list[str]:
    """The colour and shape words (as written, e.g. "crosses") by which a noun phrase of the question names its
    objects, in the order they come; [] when it names no attribute ("how many shapes are there?") or, for the
    relation phrases, when it is no relation question."""
    if phrase not in PHRASES:
        raise ValueError(f"phrase must be one of {PHRASES}, got {phrase!r}")
    parts = RELATION_WORDS.split(question.lower(), maxsplit=1)
    if phrase != "first" and len(parts) == 1:
        return []
    words = re.findall(r"[a-z]+", parts[-1] if phrase == "relation_second" else parts[0])
    return [w for w in words if w in COLORS or w in _SHAPE_WORDS]


def question_token_mask(question: str, scene: Scene, grid_size: int, phrase: str = "first") -> np.ndarray:
    """(G*G,) bool, row-major: the cells covered by the objects the question's `phrase` names."""
    named = np.array([i + 1 for i in named_objects(question, scene, phrase)], dtype=np.int64)
    return np.isin(token_owners(scene, grid_size), named)
