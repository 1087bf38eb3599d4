"""Draw a scene: flat colours, hard edges, plain background."""

from __future__ import annotations

from PIL import Image, ImageDraw

from .geometry import draw_shape
from .scene import Scene
from .world import PALETTE, WorldConfig


def render_scene(scene: Scene, config: WorldConfig | None = None) -> Image.Image:
    """RGB image of side `scene.image_size`."""
    background = (config or WorldConfig()).background
    image = Image.new("RGB", (scene.image_size, scene.image_size), background)
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        x0, y0, x1, y1 = obj.box
        draw_shape(draw, obj.shape, x0, y0, x1 - x0, y1 - y0, fill=PALETTE[obj.color])
    return image
