"""Relation-pair labels: a training-only head names how the two objects of a relation question lie to each other.

Why: "is the red circle left of the blue star?" is answered by the relation word's bit of four (is the first object
left of / right of / above / below the second). Each factor alone is uncorrelated with the answer: left of and right
of are asked equally often, so where the first object lies relative to the second says nothing about "yes" until
the relation word is read, and the relation word says nothing until the positions are. From a constant answer the
answer loss alone has no first-order gradient toward either (measured on the mini backbone, 2026-12-05: 2,000 steps
of relation questions with both objects looked up and positions on the image tokens stayed at a constant answer).
Here the four bits are asked of the language model's states at the position that predicts the answer (after layer
`layer`), so the comparison is learned on its own, and so is which relation the question asks (a four-way label at
the same place), so the layer after holds both factors of the answer side by side and only has to pick the bit.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ...data.shapes.question_targets import RELATION_WORDS, named_objects
from ...data.shapes.rules import relative_position
from ...data.shapes.text import CLEAR_RELATION
from ...data.shapes.world import INVERSE_RELATION, RELATIONS
from .answer_pointer import answer_start_positions

UNKNOWN = -1.0  # a relation that is not clear either way (left out of the loss)


def asked_relation(question: str) -> int | None:
    """The index in RELATIONS of the relation a question asks about (None for a question without one)."""
    found = RELATION_WORDS.search(question.lower())
    return None if found is None else RELATIONS.index(found.group(1))


def pair_relations(question: str, scene) -> list[float] | None:
    """Per relation of RELATIONS: 1.0 if it clearly holds for the question's first object relative to its second,
    0.0 if its inverse clearly does, UNKNOWN otherwise; None for a question that names no such pair."""
    first = named_objects(question, scene, "relation_first")
    second = named_objects(question, scene, "relation_second")
    if len(first) != 1 or len(second) != 1:
        return None
    clear = relative_position(scene.objects[first[0]].box, scene.objects[second[0]].box, threshold=CLEAR_RELATION)
    return [1.0 if rel in clear else 0.0 if INVERSE_RELATION[rel] in clear else UNKNOWN for rel in RELATIONS]


def _pair_target(question: str, scene) -> tuple[list[float], int] | None:
    relations = pair_relations(question, scene)
    return None if relations is None else (relations, asked_relation(question))


class RelationPairHead(nn.Module):
    """Linear(hidden, 4 + 4) on one language-model layer's output at the positions that predict answers: the pair's
    four relations, then which of the four the question asks."""

    def __init__(self, qwen: nn.Module, layer: int, asked_weight: float = 1.0):
        """asked_weight: the weight of the asked-relation label beside the four relations' (0 = the four only)."""
        super().__init__()
        if asked_weight < 0:
            raise ValueError(f"understanding.relation_asked_weight must be >= 0, got {asked_weight}")
        self.asked_weight = asked_weight
        layers = qwen.model.language_model.layers
        if not 1 <= layer <= len(layers):
            raise ValueError(f"understanding.relation_pointer_layer must be in 1..{len(layers)}, got {layer}")
        self.head = nn.Linear(qwen.config.text_config.hidden_size, 2 * len(RELATIONS))
        self._seen: dict = {}
        self._hooks = [
            qwen.register_forward_pre_hook(self._keep_labels, with_kwargs=True),
            layers[layer - 1].register_forward_hook(self._keep_states),
        ]

    def _keep_labels(self, module, args, kwargs) -> None:
        self._seen = {"labels": kwargs.get("labels")}

    def _keep_states(self, module, args, output) -> None:
        self._seen["states"] = output[0] if isinstance(output, tuple) else output  # (B, L, hidden)

    @staticmethod
    def targets(scenes, questions_per_row: list[list[str]]) -> list[list[tuple[list[float], int] | None]]:
        """Per row, per question in the order asked: (`pair_relations`, `asked_relation`), None for other questions."""
        return [[_pair_target(q, scene) for q in questions] for scene, questions in zip(scenes, questions_per_row)]

    def loss(self, targets) -> tuple[torch.Tensor, dict[str, float]]:
        """Over the relation questions' answer positions: binary cross-entropy of the four relations plus the
        cross-entropy of the asked one; their accuracies (`relation_pair_acc`, `relation_asked_acc`)."""
        seen, self._seen = self._seen, {}
        if seen.get("states") is None or seen.get("labels") is None:
            raise RuntimeError("no states or labels kept: the understanding forward has not run")
        states, labels = seen["states"], seen["labels"]
        rows, wanted, asked = [], [], []
        for row, (predicting, row_targets) in enumerate(zip(answer_start_positions(labels), targets)):
            for position, target in zip(predicting, row_targets):
                if target is not None:
                    rows.append(states[row, position])
                    wanted.append(target[0])
                    asked.append(target[1])
        if not rows:
            return self.head.weight.sum() * 0.0, {}
        logits = self.head(torch.stack(rows))  # (Q, 8)
        pair, which = logits[:, : len(RELATIONS)], logits[:, len(RELATIONS) :]
        wanted = torch.tensor(wanted, device=logits.device, dtype=logits.dtype)
        asked = torch.tensor(asked, device=logits.device)
        known = wanted != UNKNOWN
        loss = self.asked_weight * F.cross_entropy(which, asked)
        logs = {"relation_asked_acc": (which.argmax(dim=1) == asked).float().mean().item()}
        if known.any():  # ShapesWorld asks a relation only where it is clear, so this always holds there
            loss = loss + F.binary_cross_entropy_with_logits(pair[known], wanted[known])
            logs["relation_pair_acc"] = ((pair[known] > 0).to(wanted.dtype) == wanted[known]).float().mean().item()
        return loss, logs

    def remove(self) -> None:
        for hook in self._hooks:
            hook.remove()
