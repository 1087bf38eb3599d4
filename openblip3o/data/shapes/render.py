"""Draw a scene (flat colours, hard edges, plain background) and its exact per-pixel labels."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from .geometry import draw_shape
from .scene import Scene
from .world import COLORS, PALETTE, SHAPES, WorldConfig


def render_scene(scene: Scene, config: WorldConfig | None = None) -> Image.Image:
    """RGB image of side `scene.image_size`."""
    background = (config or WorldConfig()).background
    image = Image.new("RGB", (scene.image_size, scene.image_size), background)
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        x0, y0, x1, y1 = obj.box
        draw_shape(draw, obj.shape, x0, y0, x1 - x0, y1 - y0, fill=PALETTE[obj.color])
    return image


def render_labels(scene: Scene) -> np.ndarray:
    """(S, S) int array: 0 for background, i + 1 where object i shows (later objects cover earlier ones, as drawn).

    The exact per-pixel truth behind the picture: dense supervision for vision encoders and their probes.
    """
    mask = Image.new("L", (scene.image_size, scene.image_size), 0)
    draw = ImageDraw.Draw(mask)
    for index, obj in enumerate(scene.objects, start=1):
        x0, y0, x1, y1 = obj.box
        draw_shape(draw, obj.shape, x0, y0, x1 - x0, y1 - y0, fill=index)
    return np.asarray(mask, dtype=np.int64)


def token_owners(scene: Scene, grid_size: int) -> np.ndarray:
    """(G*G,) ints, row-major: the index + 1 of the object covering most of each cell's pixels when it covers at
    least a quarter of the cell, else 0 (background)."""
    labels = render_labels(scene)
    cell = scene.image_size // grid_size
    if cell * grid_size != scene.image_size:
        raise ValueError(f"image size {scene.image_size} is not divisible by grid size {grid_size}")
    cells = labels.reshape(grid_size, cell, grid_size, cell).transpose(0, 2, 1, 3).reshape(grid_size * grid_size, -1)
    counts = np.stack([(cells == i).sum(1) for i in range(len(scene.objects) + 1)], axis=1)  # (G*G, objects + 1)
    counts[:, 0] = 0
    owner = counts.argmax(1)
    owner[counts.max(1) * 4 < cell * cell] = 0
    return owner


def token_labels(scene: Scene, grid_size: int) -> dict[str, np.ndarray]:
    """Per-cell classes of a grid_size x grid_size tiling of the image, row-major: {"shape", "color"}: (G*G,) ints.

    A cell takes the object covering most of its pixels (class index + 1, so 0 = background) when the object
    covers at least a quarter of the cell; otherwise background.
    """
    owner = token_owners(scene, grid_size)
    shape = np.zeros(grid_size * grid_size, dtype=np.int64)
    color = np.zeros(grid_size * grid_size, dtype=np.int64)
    for index, obj in enumerate(scene.objects, start=1):
        shape[owner == index] = SHAPES.index(obj.shape) + 1
        color[owner == index] = COLORS.index(obj.color) + 1
    return {"shape": shape, "color": color}
