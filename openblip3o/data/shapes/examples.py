"""A full ShapesWorld training/evaluation example: image, captions, VQA pairs, GenEval record."""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

from .render import render_scene
from .sampler import SceneMix, SceneSampler, scene_rng
from .scene import Scene
from .text import long_caption, short_caption, vqa_pairs
from .world import WorldConfig

# Text for an example uses its own generator stream, so adding a question type never moves a scene.
TEXT_STREAM_OFFSET = 1 << 40


@dataclass
class Example:
    key: str
    image: Image.Image
    scene: Scene
    annotation: dict  # JSON-ready: captions, vqa, metadata, objects

    @property
    def metadata(self) -> dict:
        return self.scene.metadata


def annotate(scene: Scene, rng) -> dict:
    return {
        "captions": {"long": long_caption(scene), "short": short_caption(scene)},
        "vqa": vqa_pairs(scene, rng),
        "prompt": scene.metadata.get("prompt", ""),
        **scene.to_dict(),
    }


class ShapesWorld:
    """Indexable, seeded source of examples: `world[i]` is always the same example for the same seed/split."""

    def __init__(self, split: str = "train", seed: int = 0, config: WorldConfig | None = None, mix: SceneMix | None = None):
        self.config = config or WorldConfig()
        self.sampler = SceneSampler(split, seed, self.config, mix)
        self.split, self.seed = split, seed

    def scene(self, index: int) -> Scene:
        return self.sampler(index)

    def __getitem__(self, index: int) -> Example:
        scene = self.sampler(index)
        annotation = annotate(scene, scene_rng(self.seed + TEXT_STREAM_OFFSET, index, self.split))
        annotation |= {"split": self.split, "seed": self.seed, "index": index}
        return Example(f"{self.split}-{index:09d}", render_scene(scene, self.config), scene, annotation)
