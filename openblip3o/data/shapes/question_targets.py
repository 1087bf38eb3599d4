"""Which objects a question is about: the tokens an answer has to look at.

"what color is the star?" is about the star, "what shape is the green object?" about the green one, "how many
crosses are there?" about the crosses, "is the red circle left of the blue star?" about the red circle first. The
first noun phrase (before any relation word) names them by colour and / or shape; "how many shapes are there?"
names no attribute and so no target. Exact, from ShapesWorld's own question forms (`text.vqa_pairs`).
"""

from __future__ import annotations

import re

import numpy as np

from .render import token_owners
from .scene import Scene
from .world import COLORS, SHAPES, plural

RELATION_WORDS = re.compile(r"\b(left of|right of|above|below)\b")
_SHAPE_WORDS = {word: shape for shape in SHAPES for word in (shape, plural(shape))}


def named_objects(question: str, scene: Scene) -> list[int]:
    """Indices of the scene's objects the question's first noun phrase names ([] when it names no attribute)."""
    first = RELATION_WORDS.split(question.lower(), maxsplit=1)[0]
    words = re.findall(r"[a-z]+", first)
    colors = {w for w in words if w in COLORS}
    shapes = {_SHAPE_WORDS[w] for w in words if w in _SHAPE_WORDS}
    if not colors and not shapes:
        return []
    return [i for i, o in enumerate(scene.objects)
            if (not colors or o.color in colors) and (not shapes or o.shape in shapes)]


def question_token_mask(question: str, scene: Scene, grid_size: int) -> np.ndarray:
    """(G*G,) bool, row-major: the cells covered by the objects the question names."""
    named = np.array([i + 1 for i in named_objects(question, scene)], dtype=np.int64)
    return np.isin(token_owners(scene, grid_size), named)
