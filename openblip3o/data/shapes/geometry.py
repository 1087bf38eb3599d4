"""Shape outlines, shared by the renderer (to draw) and the rule scorer (as templates to match).

Every shape is a polygon in the unit box [-1, 1]^2 that touches all four sides, so an object's bounding box
is exactly its square box of side 2·radius, and a template can be fitted to any detected bounding box.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

from .world import SHAPES

STAR_INNER_RATIO = 0.5  # a fat star stays recognisable at 7 px radius
CROSS_ARM_HALF_WIDTH = 0.36
CIRCLE_SEGMENTS = 48


def _fill_unit_box(points: list[tuple[float, float]]) -> tuple[tuple[float, float], ...]:
    """Stretch a polygon so it touches every side of [-1, 1]^2."""
    xs, ys = zip(*points)
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    return tuple((2 * (x - x0) / (x1 - x0) - 1, 2 * (y - y0) / (y1 - y0) - 1) for x, y in points)


def _star() -> list[tuple[float, float]]:
    points = []
    for i in range(10):
        angle = -math.pi / 2 + i * math.pi / 5  # first point straight up (y grows downward)
        radius = 1.0 if i % 2 == 0 else STAR_INNER_RATIO
        points.append((radius * math.cos(angle), radius * math.sin(angle)))
    return points


def _cross() -> list[tuple[float, float]]:
    w = CROSS_ARM_HALF_WIDTH
    return [(-w, -1), (w, -1), (w, -w), (1, -w), (1, w), (w, w), (w, 1), (-w, 1), (-w, w), (-1, w), (-1, -w), (-w, -w)]


def _circle() -> list[tuple[float, float]]:
    return [
        (math.cos(2 * math.pi * i / CIRCLE_SEGMENTS), math.sin(2 * math.pi * i / CIRCLE_SEGMENTS))
        for i in range(CIRCLE_SEGMENTS)
    ]


UNIT_POLYGONS: dict[str, tuple[tuple[float, float], ...]] = {
    "circle": _fill_unit_box(_circle()),
    "square": ((-1.0, -1.0), (1.0, -1.0), (1.0, 1.0), (-1.0, 1.0)),
    "triangle": ((0.0, -1.0), (1.0, 1.0), (-1.0, 1.0)),
    "star": _fill_unit_box(_star()),
    "diamond": ((0.0, -1.0), (1.0, 0.0), (0.0, 1.0), (-1.0, 0.0)),
    "cross": _fill_unit_box(_cross()),
}
assert set(UNIT_POLYGONS) == set(SHAPES), "every shape class needs an outline"


def polygon_in_box(shape: str, x0: int, y0: int, width: int, height: int) -> list[tuple[float, float]]:
    """The shape's outline covering exactly the pixels x0..x0+width-1, y0..y0+height-1."""
    half_w, half_h = (width - 1) / 2, (height - 1) / 2
    cx, cy = x0 + half_w, y0 + half_h
    return [(cx + half_w * ux, cy + half_h * uy) for ux, uy in UNIT_POLYGONS[shape]]


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, x0: int, y0: int, width: int, height: int, fill) -> None:
    """Draw one shape with hard edges (no anti-aliasing) filling the given pixel box."""
    if shape == "circle":
        draw.ellipse((x0, y0, x0 + width - 1, y0 + height - 1), fill=fill)
    else:
        draw.polygon(polygon_in_box(shape, x0, y0, width, height), fill=fill)


@lru_cache(maxsize=8192)
def template_mask(shape: str, width: int, height: int) -> np.ndarray:
    """Boolean (height, width) mask of the shape drawn to fill a box of that size."""
    canvas = Image.new("L", (width, height), 0)
    draw_shape(ImageDraw.Draw(canvas), shape, 0, 0, width, height, fill=255)
    mask = np.asarray(canvas) > 0
    mask.setflags(write=False)
    return mask
