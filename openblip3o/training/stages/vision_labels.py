"""Dense labels for the vision tower during understanding: each merged vision token names the shape and colour of
the object under it (ShapesWorld knows every pixel's owner exactly).

Why: VQA's answer loss reaches the vision tower through one word per image, and after 700 steps the tower still
could not tell shapes apart (held-out shape questions 0.20 against chance 0.17; a linear shape probe on its pooled
tokens 0.31-0.35). Per-token labels give 64 supervised positions per image. The heads are training-only (linear,
dropped after the stage): the backbone keeps its Qwen2.5-VL classes and nothing is added to the shipped model.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...data.shapes import COLORS, SHAPES
from ...data.shapes.render import token_labels

LABEL_KINDS = {"shape": len(SHAPES) + 1, "color": len(COLORS) + 1}  # class 0 = background
# Where a token lies (its grid column / row, 1-based; 0 = background), asked of object tokens only. Why: the tower has
# relative rotary positions only, and its tokens did not say where they lie (linear probes 0.19 against chance 0.125),
# so a language model attending to "the star" gets its look but not its place, and relation questions fall back on
# word priors (a mirrored image changed 6 % of the shipped model's relation answers).
POSITION_KINDS = ("column", "row")


def scenes_of(examples, setting: str) -> list:
    """The ShapesWorld scenes of `examples`; a clear error naming `setting` when one has none (other data)."""
    missing = [e.key for e in examples if e.scene is None]
    if missing:
        raise ValueError(f"{setting} needs each example's ShapesWorld objects (its json 'objects'); example "
                         f"{missing[0]} has none: set it to 0 for other data")
    return [e.scene for e in examples]


class TokenLabelHeads(nn.Module):
    """Training-only linear heads that name, for every token of a G x G grid, the shape and colour under it."""

    def __init__(self, token_dim: int, grid_size: int, balanced: bool = False, position: bool = False):
        """balanced: each kind's loss is the mean of its background tokens' and its object tokens' cross-entropy,
        instead of one mean over all tokens (where the ~85 % background tokens, trivially right, dominate).
        position: also name each object token's grid column and row (POSITION_KINDS)."""
        super().__init__()
        self.grid_size, self.balanced = grid_size, balanced
        classes = dict(LABEL_KINDS) | (dict.fromkeys(POSITION_KINDS, grid_size + 1) if position else {})
        self.heads = nn.ModuleDict({kind: nn.Linear(token_dim, count) for kind, count in classes.items()})

    def labels(self, scenes) -> dict[str, torch.Tensor]:
        """Per-token classes of B scenes: {kind: (B, G * G) long}."""
        per_scene = [token_labels(scene, self.grid_size) for scene in scenes]
        place = np.arange(self.grid_size**2)  # row-major token index
        where = {"column": place % self.grid_size + 1, "row": place // self.grid_size + 1}
        for labels in per_scene:
            on_object = labels["shape"] > 0
            labels.update({kind: np.where(on_object, where[kind], 0) for kind in POSITION_KINDS})
        return {kind: torch.from_numpy(np.stack([p[kind] for p in per_scene])) for kind in self.heads}

    def token_loss(self, tokens: torch.Tensor, labels: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """tokens (B * G * G, D) or (B, G * G, D), row-major per image -> mean cross-entropy over the kinds `labels`
        holds, and per-kind accuracy over all tokens (`{kind}_token_acc`) and over object tokens only
        (`{kind}_object_acc`: the figure that says whether the tokens name the shape; background tokens are right
        almost for free)."""
        tokens = tokens.reshape(-1, tokens.shape[-1])
        batch = next(iter(labels.values())).shape[0]
        expected = batch * self.grid_size**2
        if tokens.shape[0] != expected:
            raise RuntimeError(f"{tokens.shape[0]} tokens, expected {expected} "
                               f"({batch} images of {self.grid_size}x{self.grid_size})")
        losses, logs = [], {}
        for kind, head in self.heads.items():
            if kind not in labels:  # e.g. the colour of a gray copy
                continue
            target = labels[kind].reshape(-1).to(tokens.device)
            logits = head(tokens.float())
            per_token = F.cross_entropy(logits, target, reduction="none")
            on_object = target > 0
            if self.balanced and on_object.any() and not on_object.all():
                losses.append(0.5 * (per_token[on_object].mean() + per_token[~on_object].mean()))
            else:
                losses.append(per_token.mean())
            right = logits.argmax(-1) == target
            logs[f"{kind}_token_acc"] = right.float().mean().item()
            logs[f"{kind}_object_acc"] = right[on_object].float().mean().item() if on_object.any() else float("nan")
        return torch.stack(losses).mean(), logs


class VisionLabelHeads(TokenLabelHeads):
    """The heads on the backbone's vision tower's merged tokens, fed by a forward hook on the tower.

    The hook keeps the tower's last output (B * G * G, D), so the VQA forward pass that already runs the tower
    is all the compute the labels need.
    """

    def __init__(self, visual: nn.Module, token_dim: int, grid_size: int, balanced: bool = False,
                 position: bool = False):
        super().__init__(token_dim, grid_size, balanced, position)
        self._tokens: torch.Tensor | None = None
        self._hook = visual.register_forward_hook(self._keep)

    def _keep(self, module, args, output) -> None:
        self._tokens = output.pooler_output  # (B * G * G, D), row-major per image (transformers' merger order)

    def loss(self, labels: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """The token loss of the tokens kept from the last tower pass."""
        if self._tokens is None:
            raise RuntimeError("the vision tower has not run since the last loss")
        tokens, self._tokens = self._tokens, None
        return self.token_loss(tokens, labels)

    def remove(self) -> None:
        self._hook.remove()
