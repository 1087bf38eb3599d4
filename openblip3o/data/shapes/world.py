"""The ShapesWorld vocabulary: shape classes, colours, sizes, places, and the held-out split.

Everything a scene can contain is declared here, once. The sampler, the renderer, the captioner,
the prompt generator and the rule scorer all read these tables; nothing else lists a colour or a shape.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# GenEval colour names; black is the background, so it is not an object colour.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (255, 130, 0),
    "yellow": (250, 230, 30),
    "green": (40, 175, 60),
    "blue": (40, 90, 240),
    "purple": (140, 50, 190),
    "pink": (255, 130, 200),
    "white": (245, 245, 245),
}
COLORS: tuple[str, ...] = tuple(PALETTE)

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "diamond", "cross")

# GenEval's relations, and the inverse of each (A left of B  <=>  B right of A).
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
INVERSE_RELATION: dict[str, str] = {
    "left of": "right of",
    "right of": "left of",
    "above": "below",
    "below": "above",
}

SIZES: tuple[str, ...] = ("small", "large")

# GenEval's counting numbers (two to four) and the words used for counts in text.
COUNT_WORDS: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
COUNTING_NUMBERS: tuple[int, ...] = (2, 3, 4)

# The 3x3 grid of places used in long captions, indexed [row][column].
PLACE_NAMES: tuple[tuple[str, ...], ...] = (
    ("top left", "top", "top right"),
    ("left", "center", "right"),
    ("bottom left", "bottom", "bottom right"),
)

# The held-out split, declared in one place. No training scene ever contains an object of one of these
# colour-shape pairs, nor a pair of objects standing in one of these relations (by GenEval's position rule,
# in either direction: "circle above square" also forbids "square below circle"). The `heldout` prompt
# set is built from exactly these, so it measures compositional generalisation, not memorisation.
HELDOUT_COLOR_SHAPES: frozenset[tuple[str, str]] = frozenset(
    {
        ("red", "star"),
        ("blue", "triangle"),
        ("green", "circle"),
        ("yellow", "square"),
        ("purple", "diamond"),
        ("pink", "cross"),
    }
)
HELDOUT_RELATIONS: frozenset[tuple[str, str, str]] = frozenset(
    {
        ("circle", "above", "square"),
        ("triangle", "left of", "star"),
        ("cross", "below", "diamond"),
    }
)


def heldout_relation_forms() -> frozenset[tuple[str, str, str]]:
    """Every held-out relation in both directions, as (class A, relation, class B) meaning "A rel B"."""
    forms = set(HELDOUT_RELATIONS)
    forms |= {(b, INVERSE_RELATION[rel], a) for a, rel, b in HELDOUT_RELATIONS}
    return frozenset(forms)


def article(word: str) -> str:
    """GenEval's article rule: "an" before a vowel, else "a"."""
    return "an" if word[0] in "aeiou" else "a"


def plural(noun: str) -> str:
    """GenEval's plural rule: add "es" after a final "s", else "s"."""
    return noun + ("es" if noun.endswith("s") else "s")


def check_shape(name: str) -> str:
    if name not in SHAPES:
        raise ValueError(f"unknown class {name!r}; ShapesWorld knows: {', '.join(SHAPES)}")
    return name


def check_color(name: str) -> str:
    if name not in PALETTE:
        raise ValueError(f"unknown color {name!r}; ShapesWorld knows: {', '.join(COLORS)}")
    return name


@dataclass(frozen=True)
class WorldConfig:
    """Geometry of one ShapesWorld image. Sizes are fractions of the image side so any resolution works.

    A "radius" is half the side of an object's square bounding box.
    """

    image_size: int = 64
    background: tuple[int, int, int] = (0, 0, 0)
    small_radius: tuple[float, float] = (0.11, 0.14)  # 7-9 px at 64 px
    large_radius: tuple[float, float] = (0.17, 0.21)  # 11-13 px at 64 px
    min_gap: float = 0.05  # empty space kept between object boxes (3 px at 64 px)
    margin: float = 0.02  # empty border around the image
    # A stated relation must hold with |dx| (or |dy|) at least this, well above GenEval's 0.5 threshold,
    # so that a pixel of rendering or detection jitter never flips it.
    relation_strength: float = 0.65
    max_objects: int = 4
    placement_tries: int = 200
    heldout_color_shapes: frozenset[tuple[str, str]] = field(default=HELDOUT_COLOR_SHAPES)
    heldout_relations: frozenset[tuple[str, str, str]] = field(default_factory=heldout_relation_forms)

    def radius_range(self, size: str) -> tuple[int, int]:
        lo, hi = self.small_radius if size == "small" else self.large_radius
        return max(2, round(lo * self.image_size)), max(2, round(hi * self.image_size))
