"""Dense relation labels for the language model during understanding: at each image token an object covers, its
state after a chosen layer names the shape of the nearest object left of, right of, above and below that object.

Why: the mini backbone answered relation questions from the words (`openblip3o eval mirror`: a mirrored image
changed 0-6 % of its answers, before and after more VQA training), and its vision tower cannot say where a token
lies (no absolute positions in Qwen2.5-VL's tower; a black background gives nothing to measure against: column and
row probes 0.21 / 0.20 even with per-token position labels). The language model does get each image token's 3-D
rotary position, so comparing two objects' places is its job; one yes/no answer per scene teaches that slowly, a
label at every object token for every direction does not. The heads are linear and training-only (dropped after the
stage); nothing is added to the shipped model.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...data.shapes import SHAPES
from ...data.shapes.token_relations import IGNORE, token_relations
from ...data.shapes.world import RELATIONS


class RelationLabelHeads(nn.Module):
    """Linear heads on the language model's image-token states after layer `layer` (1-based, as hidden_states
    counts), fed by hooks: the input ids of the last forward pass and that layer's output."""

    def __init__(self, qwen: nn.Module, layer: int, grid_size: int):
        """qwen: the `Qwen2_5_VLForConditionalGeneration` whose language model is read."""
        super().__init__()
        layers = qwen.model.language_model.layers
        if not 1 <= layer <= len(layers):
            raise ValueError(f"understanding.relation_label_layer must be in 1..{len(layers)}, got {layer}")
        self.grid_size, self.image_token_id = grid_size, qwen.config.image_token_id
        self.heads = nn.ModuleDict({relation.replace(" ", "_"): nn.Linear(qwen.config.text_config.hidden_size,
                                                                          len(SHAPES) + 1)
                                    for relation in RELATIONS})
        self._ids = self._states = None
        self._hooks = [qwen.model.register_forward_pre_hook(self._keep_ids, with_kwargs=True),
                       layers[layer - 1].register_forward_hook(self._keep_states)]

    def _keep_ids(self, module, args, kwargs) -> None:
        self._ids = kwargs.get("input_ids", args[0] if args else None)

    def _keep_states(self, module, args, output) -> None:
        self._states = output[0] if isinstance(output, tuple) else output  # (B, L, hidden)

    def labels(self, scenes) -> torch.Tensor:
        """(B, G * G, 4) long: per image token and relation, 1 + the neighbour's shape, 0 none, IGNORE background."""
        return torch.from_numpy(np.stack([token_relations(scene, self.grid_size) for scene in scenes]))

    def loss(self, labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Mean cross-entropy over object tokens and relations of the states kept from the last forward pass, and
        the share of (token, relation) labels right (`relation_object_acc`)."""
        if self._ids is None or self._states is None:
            raise RuntimeError("the language model has not run since the last relation loss")
        ids, states, self._ids, self._states = self._ids, self._states, None, None
        image = ids == self.image_token_id  # (B, L)
        expected = self.grid_size**2
        if not bool((image.sum(1) == expected).all()):
            raise RuntimeError(f"relation labels need one image of {expected} tokens per row, got "
                               f"{image.sum(1).tolist()}")
        tokens = states[image].reshape(ids.shape[0], expected, -1).float()  # row-major, as the merger orders them
        labels = labels.to(tokens.device)
        losses, hits = [], torch.zeros(2, 2)  # rows: every object token's label / those that name a neighbour
        for k, head in enumerate(self.heads.values()):
            logits, target = head(tokens).reshape(-1, len(SHAPES) + 1), labels[..., k].reshape(-1)
            losses.append(F.cross_entropy(logits, target, ignore_index=IGNORE))
            right = (logits.argmax(-1) == target).float().cpu()
            for row, kept in enumerate((target != IGNORE, target > 0)):
                hits[row] += torch.stack([right[kept.cpu()].sum(), kept.sum().float().cpu()])
        loss = torch.stack(losses).mean() if hits[0, 1] else tokens.sum() * 0.0
        share = (hits[:, 0] / hits[:, 1]).tolist()  # nan where nothing was counted
        # *_object_acc: all labels of object tokens ("none" is most of them); *_neighbour_acc: the neighbours named
        return loss, {"relation_object_acc": share[0], "relation_neighbour_acc": share[1]}

    def remove(self) -> None:
        for hook in self._hooks:
            hook.remove()
