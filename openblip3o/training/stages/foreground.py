"""Per-token loss weights that favour the tokens objects cover (ShapesWorld's plain background only).

Why: on the 8x8 grid one or two small objects cover a few of the 64 tokens, so the flow loss is mostly background,
and where objects land is drawn at random; what an object looks like (its shape, and which colour goes with which
shape) is a small share of the loss. Weighting object tokens up makes drawing the named objects, and binding each
colour to its shape, a larger share of what the DiT is rewarded for. The map is read from the image's pixels (any
pixel away from the plain background is an object's), so it needs no annotation and works for shards of the world.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...data.shapes.world import WorldConfig

# A pixel whose largest channel difference from the background exceeds this (in [0, 1] units) is an object's;
# resizing blurs edges, so a small margin rather than exact equality.
FOREGROUND_THRESHOLD = 0.1


def foreground_weights(images: torch.Tensor, grid_size: int, weight: float,
                       background: tuple[int, int, int] | None = None) -> torch.Tensor:
    """images: (B, 3, S, S) in [0, 1] -> (B, 1, G, G) weights 1 + weight * (share of the token's pixels on objects).

    The grid tokens tile the image in raster order, as the target encoder pools its patches."""
    colour = background if background is not None else WorldConfig().background
    reference = torch.tensor(colour, dtype=images.dtype, device=images.device).view(1, 3, 1, 1) / 255.0
    on_object = ((images - reference).abs().amax(dim=1, keepdim=True) > FOREGROUND_THRESHOLD).to(images.dtype)
    return 1.0 + weight * F.adaptive_avg_pool2d(on_object, grid_size)


def checked_weight(weight: float, name: str = "generation_foreground_weight") -> float:
    """A configured loss weight, refused when negative (it would reward the error it weighs)."""
    if weight < 0:
        raise ValueError(f"{name} must be >= 0, got {weight}")
    return float(weight)


def _object_weights(model, images: torch.Tensor, foreground_weight: float) -> torch.Tensor | None:
    return foreground_weights(images, model.grid_size, foreground_weight) if foreground_weight > 0 else None


def generation_loss(model, images: torch.Tensor, captions: list[str], generator: torch.Generator | None,
                    foreground_weight: float) -> torch.Tensor:
    """The model's generation loss on images (B, 3, S, S) and their captions, object tokens weighted
    1 + foreground_weight (0 = every token alike, BLIP3-o). Shared by the generation and instruct stages."""
    images = images.to(model.backbone.device)
    return model.generation_loss(images, captions, generator, _object_weights(model, images, foreground_weight))


def binding_losses(model, images: torch.Tensor, captions: list[str], negatives: list[str | None],
                   generator: torch.Generator | None, foreground_weight: float) -> tuple[torch.Tensor, torch.Tensor]:
    """`generation_loss` and the binding hinge (models' `generation_binding_losses`), object tokens weighted alike."""
    images = images.to(model.backbone.device)
    weights = _object_weights(model, images, foreground_weight)
    return model.generation_binding_losses(images, captions, negatives, generator, weights)
