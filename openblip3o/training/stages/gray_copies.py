"""Gray copies: grayscale versions of the batch's scenes go through the vision tower once more, with the per-token
shape and place labels only (their colour is gone), so the tower's shape features cannot lean on colour.

Why (measured 2026-12-06 on the backbone of runs/cnta2, held-out split): the remaining VQA misses were questions about
objects of the colour-shape pairs no training scene holds (red star, blue triangle, ...): the language model found
the named object (pointer mass 0.92 even when wrong) but read a wrong shape there. The tower's object tokens named
their shape at 0.994 for seen pairs and 0.852 for held-out pairs (linear heads fitted on training scenes). A spike of
the tower alone with its label heads, 150 steps: colour images only 0.860, half of them gray 0.935 (seen pairs 0.994
both). Gray is no object colour here, so no held-out pair is ever shown. The labels' heads are the vision labels'
own (`VisionLabelHeads`), shared with the colour images so one shape subspace serves both.
"""

from __future__ import annotations

import torch
from PIL import Image, ImageOps

from .vision_labels import VisionLabelHeads

COLOURLESS = ("color",)  # label kinds a gray copy cannot name


def gray_copy(image: Image.Image) -> Image.Image:
    """The image's luminance, as RGB (the tower's input format)."""
    return ImageOps.grayscale(image).convert("RGB")


class GrayCopies:
    """Builds the gray rows of a batch and their label loss on the tower (through the vision labels' hook)."""

    def __init__(self, backbone, heads: VisionLabelHeads, rows: float):
        """rows: gray copies per VQA row (the first round(size * rows) rows of each batch are copied; at most all)."""
        if rows < 0:
            raise ValueError(f"understanding.gray_rows must be >= 0, got {rows}")
        self.backbone, self.heads, self.rows = backbone, heads, rows

    def batch(self, examples, scenes) -> tuple[list[Image.Image], dict[str, torch.Tensor]]:
        """The gray copies of the first examples and their labels {kind: (N, G * G) long}, colour left out."""
        count = min(len(examples), round(len(examples) * self.rows))
        labels = self.heads.labels(scenes[:count])
        return [gray_copy(e.image) for e in examples[:count]], {k: v for k, v in labels.items() if k not in COLOURLESS}

    def loss(self, images: list[Image.Image], labels: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """The token loss on the tower's output for the gray copies; logs prefixed `gray_`."""
        backbone = self.backbone
        visual = backbone.model.model.visual
        side = (backbone.cfg.image_size, backbone.cfg.image_size)
        pixels = backbone.processor.image_processor(images=[im.resize(side) for im in images], return_tensors="pt")
        visual(pixels["pixel_values"].to(backbone.device, visual.dtype),
               grid_thw=pixels["image_grid_thw"].to(backbone.device))  # the heads' hook keeps the tokens
        loss, logs = self.heads.loss(labels)
        return loss, {f"gray_{key}": value for key, value in logs.items()}
