"""Seeded scene sampling: a GenEval record is drawn, then realised as a scene that satisfies it exactly."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from .prompts import TAGS, PromptSampler, validate_record
from .rules import relation_offsets, relative_position
from .scene import Scene, ShapeObject
from .world import COLORS, SIZES, WorldConfig

SPLIT_IDS = {"train": 0, "eval": 1, "heldout": 2}
MAX_SCENE_RESTARTS = 100


class PlacementError(RuntimeError):
    """The objects of a record could not be placed on the canvas (too many or too large)."""


@dataclass(frozen=True)
class SceneMix:
    """How often each GenEval tag is drawn for training scenes."""

    weights: dict[str, float] = field(
        default_factory=lambda: {
            "single_object": 0.15,
            "two_object": 0.15,
            "counting": 0.2,
            "colors": 0.15,
            "position": 0.15,
            "color_attr": 0.2,
        }
    )

    def __post_init__(self):
        unknown = set(self.weights) - set(TAGS)
        if unknown:
            raise ValueError(f"unknown tags {sorted(unknown)}; GenEval's tags are: {', '.join(TAGS)}")


def scene_rng(seed: int, index: int, split: str) -> random.Random:
    """The generator of scene `index`: independent of every other scene, so shards can be made in parallel."""
    return random.Random((seed << 34) + (index << 2) + SPLIT_IDS[split])


def _holds_strongly(box_a, box_b, relation: str, strength: float) -> bool:
    offsets = relation_offsets(box_a, box_b)
    if offsets is None:
        return False
    dx, dy = offsets
    return {"left of": dx < -strength, "right of": dx > strength, "above": dy < -strength, "below": dy > strength}[
        relation
    ]


def _boxes_apart(a, b, gap: int) -> bool:
    return a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1]


def _pick_color(shape: str, rng: random.Random, config: WorldConfig, forbid_heldout: bool) -> str:
    while True:
        color = rng.choice(COLORS)
        if not forbid_heldout or (color, shape) not in config.heldout_color_shapes:
            return color


def _try_place(rec: dict, rng: random.Random, config: WorldConfig, forbid_heldout: bool) -> list[ShapeObject] | None:
    size_px = config.image_size
    gap = max(1, round(config.min_gap * size_px))
    border = round(config.margin * size_px)
    placed: list[ShapeObject] = []
    groups: list[list[ShapeObject]] = []
    for clause in rec["include"]:
        group: list[ShapeObject] = []
        for _ in range(clause["count"]):
            color = clause.get("color") or _pick_color(clause["class"], rng, config, forbid_heldout)
            for _attempt in range(config.placement_tries):
                size = rng.choice(SIZES)
                r = rng.randint(*config.radius_range(size))
                lo, hi = border + r, size_px - border - r
                if lo > hi:
                    continue
                obj = ShapeObject(clause["class"], color, size, rng.randint(lo, hi), rng.randint(lo, hi), r)
                if not all(_boxes_apart(obj.box, other.box, gap) for other in placed):
                    continue
                if "position" in clause:
                    relation, target_group = clause["position"]
                    if not all(
                        _holds_strongly(obj.box, t.box, relation, config.relation_strength)
                        for t in groups[target_group]
                    ):
                        continue
                if forbid_heldout and any(
                    (obj.shape, rel, other.shape) in config.heldout_relations
                    for other in placed
                    for rel in relative_position(obj.box, other.box)
                ):
                    continue
                placed.append(obj)
                group.append(obj)
                break
            else:
                return None
        groups.append(group)
    return placed


def realise(rec: dict, rng: random.Random, config: WorldConfig | None = None, forbid_heldout: bool = False) -> Scene:
    """A scene that satisfies a GenEval record exactly: the included objects and nothing else.

    Unstated colours are drawn at random (never a held-out pair when `forbid_heldout`); a stated relation
    holds with a margin well beyond GenEval's threshold; objects never touch.
    """
    config = config or WorldConfig()
    validate_record(rec)
    total = sum(c["count"] for c in rec["include"])
    if total > config.max_objects:
        raise PlacementError(f"{total} objects requested; ShapesWorld places at most {config.max_objects}")
    for _ in range(MAX_SCENE_RESTARTS):
        objects = _try_place(rec, rng, config, forbid_heldout)
        if objects is not None:
            return Scene(objects=tuple(objects), image_size=config.image_size, metadata=rec)
    raise PlacementError(f"could not place the objects of {rec.get('prompt', rec)!r} on a {config.image_size}px canvas")


class SceneSampler:
    """Scene `index` of a split is a pure function of (seed, index, split)."""

    def __init__(
        self,
        split: str = "train",
        seed: int = 0,
        config: WorldConfig | None = None,
        mix: SceneMix | None = None,
    ):
        self.split, self.seed = split, seed
        self.config = config or WorldConfig()
        self.prompts = PromptSampler(split)
        weights = (mix or SceneMix()).weights
        self.tags, self.weights = list(weights), list(weights.values())

    def __call__(self, index: int) -> Scene:
        rng = scene_rng(self.seed, index, self.split)
        tag = rng.choices(self.tags, self.weights)[0]
        rec = self.prompts.sample(tag, rng)
        return realise(rec, rng, self.config, forbid_heldout=self.split != "heldout")
