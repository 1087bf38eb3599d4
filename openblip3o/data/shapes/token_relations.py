"""What lies around each object, per token: the exact truth behind relation questions, for dense supervision.

For every cell of a G x G tiling that an object covers (`token_owners`), and for each of GenEval's four relations,
the shape of the nearest other object that stands in that relation to it ("left of": an object left of this one),
by the same rule that scores generated images and decides relation answers (`rules.relative_position`).
"""

from __future__ import annotations

import numpy as np

from .render import token_owners
from .rules import relative_position
from .scene import Scene
from .world import RELATIONS, SHAPES

IGNORE = -100  # background cells: no object, nothing to say about its neighbours


def token_relations(scene: Scene, grid_size: int) -> np.ndarray:
    """(G*G, 4) ints, row-major cells x RELATIONS: 1 + the shape index of the nearest object that is `relation` this
    cell's object, 0 when none is, IGNORE on background cells."""
    objects = scene.objects
    around = np.zeros((len(objects) + 1, len(RELATIONS)), dtype=np.int64)
    around[0] = IGNORE
    for i, obj in enumerate(objects, start=1):
        for k, relation in enumerate(RELATIONS):
            others = [o for o in objects if o is not obj and relation in relative_position(o.box, obj.box)]
            if others:
                nearest = min(others, key=lambda o: (o.cx - obj.cx) ** 2 + (o.cy - obj.cy) ** 2)
                around[i, k] = SHAPES.index(nearest.shape) + 1
    return around[token_owners(scene, grid_size)]
