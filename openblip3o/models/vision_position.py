"""Absolute 2-D positions added to the vision tower's merged tokens (a mini-scale option, off at full scale).

Why: Qwen2.5-VL carries positions only through rotary attention, in its vision tower and in its language model. On
ShapesWorld's black background every background token is alike, so an object's token has nothing to measure its
place against, and what a lookup retrieves (an attention head's values) holds no position at all: rotary changes
which tokens a head looks at, never what it reads from them. Measured on the mini backbone (2026-12-05, 200
scenes): the tower's object tokens named their column / row at 0.21 / 0.20 (chance 0.125) after 600 steps of
position labels; a linear probe read both exactly (R^2 0.999) once this table was added. A pretrained Qwen2.5-VL
has learned positions from natural images; Qwen3-VL's tower adds a learned absolute table for the same reason.

The table is fixed (no parameters, nothing to save): sin / cos of the merged-grid row in the first half of the
channels and of the column in the second, at geometric frequencies, scaled by `scale` (unit sin / cos: RMS 0.71).
"""

from __future__ import annotations

import torch
from torch import nn

FREQUENCY_BASE = 100.0  # the slowest frequency's period, in merged tokens: far above any mini grid side
AXES = 2  # rows, columns


def sincos_grid(dim: int, rows: int, cols: int) -> torch.Tensor:
    """(rows * cols, dim) row-major: sin / cos of the row in channels [0, dim / 2), of the column in the rest."""
    if dim % (2 * AXES):
        raise ValueError(f"a 2-D sin / cos table needs a width divisible by {2 * AXES}, got {dim}")
    quarter = dim // (2 * AXES)
    frequencies = FREQUENCY_BASE ** (-torch.arange(quarter, dtype=torch.float32) / quarter)

    def encode(positions: torch.Tensor) -> torch.Tensor:
        angles = positions.float()[:, None] * frequencies[None]
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    index = torch.arange(rows * cols)
    return torch.cat([encode(index // cols), encode(index % cols)], dim=1)


class VisionPosition:
    """A forward hook on Qwen2.5-VL's vision tower that adds `scale * sincos_grid` to each image's merged tokens.

    The tower's `pooler_output` (N, D) holds, per image of `grid_thw` (t, h, w), t * (h / m) * (w / m) merged tokens
    in row-major order (m = spatial_merge_size); the language model reads exactly these.
    """

    def __init__(self, visual: nn.Module, scale: float):
        if scale <= 0:
            raise ValueError(f"backbone.vision_position_scale must be > 0, got {scale}")
        self.scale, self.merge = scale, visual.spatial_merge_size
        self._hook = visual.register_forward_hook(self._add, with_kwargs=True)

    def table(self, grid_thw: torch.Tensor, dim: int) -> torch.Tensor:
        """(N, dim): every image's rows of the table, in the order the tower returns its merged tokens."""
        parts = []
        for frames, height, width in grid_thw.tolist():
            rows, cols = height // self.merge, width // self.merge
            parts.append(sincos_grid(dim, rows, cols).repeat(frames, 1))
        return torch.cat(parts) * self.scale

    def _add(self, module, args, kwargs, output):
        grid_thw = kwargs.get("grid_thw", args[1] if len(args) > 1 else None)
        if grid_thw is None:
            raise ValueError("the vision tower ran without grid_thw: the position table needs each image's grid")
        merged = output.pooler_output  # (N, D)
        table = self.table(grid_thw, merged.shape[-1])
        if table.shape[0] != merged.shape[0]:
            raise ValueError(f"the vision tower returned {merged.shape[0]} merged tokens for grids {grid_thw.tolist()}"
                             f" ({table.shape[0]} expected)")
        output.pooler_output = merged + table.to(merged)
        return output

    def remove(self) -> None:
        self._hook.remove()
