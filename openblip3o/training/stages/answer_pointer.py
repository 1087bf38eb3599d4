"""Answer pointing: one attention head of the language model is taught to look at the object a question names.

Why: the mini backbone answered colour and shape questions right for every one-object scene and at chance (about
half) for two-object ones, giving the other object's colour or shape (measured 2026-12-05: `eval` split colour 72 /
72 against 52 / 93): it never learned to find "the star" among the image tokens, and relation questions need that
lookup first. One answer word per question teaches the lookup slowly; here, at each position that predicts the
first token of an answer, head `head` of layer `layer` is asked to put its attention on the image tokens of the
objects the question names (`question_targets`): the loss is -log of that attention mass. Nothing is added to the
model: the supervision is on its own attention, which the eager attention implementation exposes (set for the
stage, restored after).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ...data.shapes.question_targets import named_words, question_token_mask
from ...models.template import IGNORE_INDEX

MASS_FLOOR = 1e-6  # keeps -log finite when a head starts with no attention on the target


def answer_start_positions(labels: torch.Tensor) -> list[list[int]]:
    """labels (B, L) of an understanding batch -> per row, the positions that predict an answer's first token (p
    predicts token p + 1), in the order the answers come."""
    answer = labels != IGNORE_INDEX
    starts = answer[:, 1:] & ~answer[:, :-1]  # (B, L - 1)
    return [torch.nonzero(row).squeeze(1).tolist() for row in starts]


class AnswerPointer:
    """Hooks on the Qwen model that keep the labels, input ids and one layer's attention weights of a forward pass."""

    def __init__(self, qwen: nn.Module, layer: int, head: int, grid_size: int, phrase: str = "first",
                 option: str = "pointer", log_key: str = "pointer_mass", head_option: str | None = None,
                 absent_to_image_start: bool = False):
        """phrase: which noun phrase the head looks for (`question_targets.PHRASES`); option: the config prefix that
        errors name (`head_option`, default option + "_head", for the head); log_key: the name of the attention mass
        in the training log; absent_to_image_start: when the question names objects the image lacks ("how many
        stars?" with no star), the head is taught to attend to the image's start token instead (else the question
        is left out), so what it reads says "none" rather than some other object."""
        layers = qwen.model.language_model.layers
        if not 1 <= layer <= len(layers):
            raise ValueError(f"understanding.{option}_layer must be in 1..{len(layers)}, got {layer}")
        heads = qwen.config.text_config.num_attention_heads
        if not 0 <= head < heads:
            raise ValueError(f"understanding.{head_option or option + '_head'} must be in 0..{heads - 1}, got {head}")
        self.qwen, self.head, self.grid_size, self.phrase, self.log_key = qwen, head, grid_size, phrase, log_key
        self.image_token_id = qwen.config.image_token_id
        self.image_start_id = qwen.config.vision_start_token_id if absent_to_image_start else None
        self._implementation = qwen.config._attn_implementation
        qwen.set_attn_implementation("eager")  # the only one that returns attention weights
        self._seen: dict = {}
        self._hooks = [
            qwen.register_forward_pre_hook(self._keep_inputs, with_kwargs=True),
            layers[layer - 1].self_attn.register_forward_hook(self._keep_weights),
        ]

    def _keep_inputs(self, module, args, kwargs) -> None:
        self._seen = {"input_ids": kwargs.get("input_ids"), "labels": kwargs.get("labels")}

    def _keep_weights(self, module, args, output) -> None:
        self._seen["weights"] = output[1]  # (B, heads, L, L)

    def targets(self, scenes, questions_per_row: list[list[str]]) -> list[list[np.ndarray]]:
        """Per row, per question in the order asked: the (G*G,) bool mask of the named objects' tokens (all False
        when the image has none of them), or None when the question names no object."""
        return [[question_token_mask(q, scene, self.grid_size, self.phrase) if named_words(q, self.phrase) else None
                 for q in questions] for scene, questions in zip(scenes, questions_per_row)]

    def loss(self, targets: list[list[np.ndarray]]) -> tuple[torch.Tensor, dict[str, float]]:
        """-log attention mass on the named tokens, averaged over the answers whose question names an object seen
        in the image; and that mass (`log_key`, 1.0 = all of the head's attention on the named object)."""
        seen, self._seen = self._seen, {}
        if seen.get("weights") is None or seen.get("labels") is None:
            raise RuntimeError("no attention weights or labels kept: the understanding forward has not run")
        weights, labels, ids = seen["weights"], seen["labels"], seen["input_ids"]
        masses = []
        for row, (predicting, row_targets) in enumerate(zip(answer_start_positions(labels), targets)):
            for position, target in zip(predicting, row_targets):
                named = self.named_positions(ids[row], position, target)
                if named is not None:
                    masses.append(weights[row, self.head, position, named].sum())
        if not masses:
            return weights.sum() * 0.0, {}
        mass = torch.stack(masses)
        return -(mass.clamp_min(MASS_FLOOR)).log().mean(), {self.log_key: mass.mean().item()}

    def named_positions(self, ids: torch.Tensor, position: int, mask: np.ndarray | None) -> torch.Tensor | None:
        """ids (L,) of one row; mask (G*G,) from `targets` -> the positions of the named objects' image tokens (the
        image's start token when it has none of them and `absent_to_image_start`), or None when nothing is to be
        looked at."""
        image = torch.nonzero(ids == self.image_token_id).squeeze(1)
        if mask is None or len(image) != mask.size:
            return None
        if not mask.any():
            if self.image_start_id is None:
                return None
            return torch.nonzero(ids[:position] == self.image_start_id).squeeze(1)[-1:]
        return image[torch.from_numpy(mask).to(image.device)]

    def remove(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self.qwen.set_attn_implementation(self._implementation)
