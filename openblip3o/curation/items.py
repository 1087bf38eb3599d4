"""What flows through curation: an `Item` to make goes in, an `Outcome` (an image or a failure) comes out.

Every backend (HTTP, local pipeline, renderer), the plan and the writer share these; they live apart from all of them
so no two of those modules need to import each other.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

from PIL import Image

PNG_COMPRESS_LEVEL = 1  # small generated images: fast compression matters more than a few bytes


@dataclass(frozen=True)
class Item:
    """One image to make. `id` is a pure function of (prompt index, seed): a rerun recognises finished work by it."""

    id: str
    index: int  # the prompt's index in the plan
    prompt: str
    category: str
    seed: int
    # mini scale: the prompt's GenEval record (what the exact renderer draws, and what a scorer checks)
    metadata: dict | None = field(default=None, compare=False, hash=False)


def item_id(index: int, seed: int) -> str:
    return f"{index:06d}-{seed}"


@dataclass
class Outcome:
    """The verdict on one item: `image` (+ the bytes received) or a failure `reason` with a short `detail`."""

    item: Item
    image: Image.Image | None = None
    data: bytes | None = None  # the encoded image as received (kept as is: no re-encoding loss)
    ext: str = "png"
    reason: str | None = None
    detail: str = ""
    attempts: int = 1
    seconds: float = 0.0


def png_bytes(image: Image.Image) -> bytes:
    """A PNG of an image made locally (the local pipeline and the renderer store what they made this way)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buffer.getvalue()
