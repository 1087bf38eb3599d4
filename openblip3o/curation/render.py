"""`--backend render`: ShapesWorld's exact renderer as the "strong image model" of the mini scale.

BLIP3o-60k was made by prompting a stronger image model than the one being tuned. At mini scale the strongest image
model there is draws each prompt's GenEval record exactly (`realise` + `render_scene`), so the mini instruction set is
correct by construction and the tuned model learns from images that really show the prompt. The scene of an item is
a pure function of its seed: a resumed run redraws exactly the images a kill lost.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterable, Iterator

from .items import Item, Outcome, png_bytes

SOURCE = "shapesworld-render"


class RenderBackend:
    """Items (mini scale, each with its GenEval record) -> exact renders as `Outcome`s."""

    source = SOURCE

    def __init__(self, image_size: int | None = None):
        from ..data.shapes.world import WorldConfig

        self.world = WorldConfig() if image_size is None else WorldConfig(image_size=image_size)

    def render(self, item: Item):
        from ..data.shapes import realise, render_scene

        # Never a held-out combination: the held-out evaluation must stay unseen by instruction tuning too.
        scene = realise(item.metadata, random.Random(item.seed), self.world, forbid_heldout=True)
        return render_scene(scene, self.world)

    def run(self, items: Iterable[Item]) -> Iterator[Outcome]:
        for item in items:
            if item.metadata is None:
                yield Outcome(item, reason="no_metadata", detail="the render backend needs a mini-scale plan (GenEval records)")
                continue
            begin = time.monotonic()
            try:
                image = self.render(item)
            except ValueError as err:  # a record the world cannot draw (unknown class or colour, impossible layout)
                yield Outcome(item, reason="render_error", detail=str(err)[:200])
                continue
            yield Outcome(item, image=image, data=png_bytes(image), seconds=time.monotonic() - begin)
