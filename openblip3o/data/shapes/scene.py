"""A ShapesWorld scene: objects with class, colour, size and place, plus the GenEval record it realises."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from .world import PLACE_NAMES, check_color, check_shape


@dataclass(frozen=True)
class ShapeObject:
    """One flat-coloured shape. Its bounding box is the square of side 2·radius centred on (cx, cy)."""

    shape: str
    color: str
    size: str  # "small" | "large"
    cx: int
    cy: int
    radius: int

    @property
    def box(self) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1) in pixels, x1/y1 exclusive: exactly the pixels the renderer fills."""
        r = self.radius
        return (self.cx - r, self.cy - r, self.cx + r, self.cy + r)

    def place(self, image_size: int) -> str:
        """Which cell of the 3x3 grid holds the centre: "top left", "center", ..."""
        col = min(2, 3 * self.cx // image_size)
        row = min(2, 3 * self.cy // image_size)
        return PLACE_NAMES[row][col]


@dataclass(frozen=True)
class Scene:
    objects: tuple[ShapeObject, ...]
    image_size: int
    metadata: dict = field(default_factory=dict)  # the GenEval record this scene realises

    def to_dict(self) -> dict:
        return {
            "image_size": self.image_size,
            "objects": [asdict(o) | {"box": list(o.box), "place": o.place(self.image_size)} for o in self.objects],
            "metadata": self.metadata,
        }

    @classmethod
    def from_dict(cls, data: dict) -> Scene:
        objects = tuple(
            ShapeObject(
                shape=check_shape(o["shape"]),
                color=check_color(o["color"]),
                size=o["size"],
                cx=int(o["cx"]),
                cy=int(o["cy"]),
                radius=int(o["radius"]),
            )
            for o in data["objects"]
        )
        return cls(objects=objects, image_size=int(data["image_size"]), metadata=data.get("metadata", {}))
