"""Understanding: the backbone learns captioning and VQA (mini: from scratch; full scale: fine-tuning), mixed with
a text-only next-token loss on captions in the generation template.

The text loss makes the mini backbone the counterpart of a pretrained LLM: BLIP3-o freezes the backbone for
generation and relies on its states after a prompt summarising the prompt, which an answer-only loss never
teaches (measured: one-word-different prompts gave query states 0.2-2.9 % apart without it).
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from ...config import ConfigError, check_choice
from ...data.sources import MAIN, STREAM_OFFSETS, TEXT, DataSource, ShapesSource
from ...models.backbone import Backbone
from ...models.unified import BLIP3oModel
from ..config import UnderstandingMix
from .data import COUNT_STREAM, SourceState, choice_rng, count_questions, pick_caption, pick_follow_ups, pick_question
from .answer_pointer import AnswerPointer
from .gray_copies import GrayCopies
from .relation_labels import RelationLabelHeads
from .relation_pair import RelationPairHead
from .vision_labels import VisionLabelHeads, scenes_of
from .word_pointer import WordPointer

# Text rows draw their examples from a stream of their own; their per-row choices are seeded past the VQA rows'.
TEXT_STREAM_OFFSET = STREAM_OFFSETS[TEXT]
TRAINABLE = ("all", "vision")  # understanding.trainable
# options that train (or hold) the language model, and so need trainable: all
LANGUAGE_OPTIONS = ("condition_retention_weight", "relation_label_weight", "pointer_weight", "word_pointer_weight",
                    "relation_pointer_weight", "relation_pair_weight")


class UnderstandingTask(SourceState):
    name = "understanding"

    def __init__(self, model: BLIP3oModel, seed: int = 0, mix: UnderstandingMix | None = None,
                 source: DataSource | None = None):
        """source: image + question/answer (or caption) rows; default ShapesWorld's train split."""
        self.model, self.seed, self.mix = model, seed, mix or UnderstandingMix()
        self.source = source or ShapesSource("train", seed)
        check_choice("understanding.trainable", self.mix.trainable, TRAINABLE)
        if self.mix.trainable == "vision" and self.mix.text_rows > 0:
            raise ConfigError("understanding.text_rows train the language model, which trainable: vision keeps "
                              "frozen: set text_rows to 0")
        if self.mix.trainable != "all":
            for name in LANGUAGE_OPTIONS:
                if getattr(self.mix, name) > 0:
                    raise ConfigError(f"understanding.{name} works on the language model, which trainable: "
                                      f"{self.mix.trainable} keeps frozen: set it to 0")
        model.backbone.set_backbone_trainable(self.mix.trainable == "all")
        self.trained = model.backbone.model if self.mix.trainable == "all" else model.backbone.model.model.visual
        self.trained.requires_grad_(True)
        self.reference = None
        if self.mix.condition_retention_weight > 0:
            # The starting model, frozen. A module of the task, so a checkpoint keeps it and a resumed run compares
            # with the stage's start, not with where it was killed.
            self.reference = self._retention_reference(model).eval().requires_grad_(False)
            model.backbone.model.get_input_embeddings().requires_grad_(False)  # the condition's word part
        self.vision_labels = None
        if self.mix.vision_label_weight > 0:
            backbone = model.backbone
            self.vision_labels = VisionLabelHeads(backbone.model.model.visual,
                                                  backbone.model.config.vision_config.out_hidden_size,
                                                  backbone.vision_grid, self.mix.vision_label_balanced,
                                                  self.mix.vision_label_position)
        self.gray = None
        if self.mix.gray_rows > 0:
            if self.vision_labels is None:
                raise ConfigError("understanding.gray_rows trains the vision labels' heads on gray copies: set "
                                  "vision_label_weight > 0 too")
            self.gray = GrayCopies(model.backbone, self.vision_labels, self.mix.gray_rows)
        self.relation_labels = None
        if self.mix.relation_label_weight > 0:
            self.relation_labels = RelationLabelHeads(model.backbone.model, self.mix.relation_label_layer,
                                                      model.backbone.vision_grid)
        self.pointer = None
        if self.mix.pointer_weight > 0:
            self.pointer = AnswerPointer(model.backbone.model, self.mix.pointer_layer, self.mix.pointer_head,
                                         model.backbone.vision_grid,
                                         absent_to_image_start=self.mix.pointer_absent_to_image_start)
        self.word_pointer = None
        if self.mix.word_pointer_weight > 0:
            self.word_pointer = WordPointer(model.backbone.model, self.mix.word_pointer_layer,
                                            self.mix.word_pointer_head, model.backbone.tokenizer)
        self.relation_pointers = []
        if self.mix.relation_pointer_weight > 0:
            phrases = ("relation_first", "relation_second")  # the first and the second object a question names
            heads = zip(self.mix.relation_pointer_heads, phrases, strict=True)
            self.relation_pointers = [
                AnswerPointer(model.backbone.model, self.mix.relation_pointer_layer, head, model.backbone.vision_grid,
                              phrase, option="relation_pointer", log_key=f"relation_pointer_{index}_mass",
                              head_option="relation_pointer_heads")
                for index, (head, phrase) in enumerate(heads)
            ]
        self.relation_pair = None
        if self.mix.relation_pair_weight > 0:
            self.relation_pair = RelationPairHead(model.backbone.model, self.mix.relation_pointer_layer,
                                                  self.mix.relation_asked_weight)

    def _retention_reference(self, model: BLIP3oModel) -> torch.nn.Module:
        """The language model the retention loss holds the condition to: a copy of the starting one, or the backbone
        of `condition_retention_reference` (a pipeline folder), which must have the same weights' names and shapes."""
        folder = self.mix.condition_retention_reference
        if not folder:
            return copy.deepcopy(model.backbone.model)
        directory = Path(folder) / "backbone"
        if not directory.is_dir():
            raise ConfigError(f"understanding.condition_retention_reference: {folder} is no pipeline folder "
                              f"(no {directory})")
        reference = Backbone.from_pretrained(directory, model.backbone.cfg).model.to(model.backbone.model.dtype)
        ours = {k: v.shape for k, v in model.backbone.model.state_dict().items()}
        theirs = {k: v.shape for k, v in reference.state_dict().items()}
        if ours != theirs:
            differing = sorted(k for k in ours.keys() | theirs.keys() if ours.get(k) != theirs.get(k))
            raise ConfigError(f"understanding.condition_retention_reference: {folder}'s backbone differs from the "
                              f"trained one in {len(differing)} weight(s), e.g. {differing[:3]}")
        return reference

    def modules(self):
        # The queries and projector serve generation only; they stay out of this stage's optimiser.
        heads = {"vision_label_heads": self.vision_labels} if self.vision_labels is not None else {}
        heads |= {"relation_label_heads": self.relation_labels} if self.relation_labels is not None else {}
        heads |= {"relation_pair_head": self.relation_pair} if self.relation_pair is not None else {}
        reference = {"condition_reference": self.reference} if self.reference is not None else {}
        return {"backbone" if self.mix.trainable == "all" else "vision": self.trained} | heads | reference

    def finish(self) -> None:
        """Drop the training-only heads' and the pointer's hooks from the backbone."""
        hooked = [self.vision_labels, self.relation_labels, self.pointer, self.word_pointer, *self.relation_pointers,
                  self.relation_pair]
        for heads in reversed(hooked):  # reversed: each pointer restores the attention implementation it found
            if heads is not None:
                heads.remove()

    def text_count(self, size: int) -> int:
        """Text-only rows that go with `size` VQA rows."""
        return round(size * self.mix.text_rows)

    def retention_count(self, size: int) -> int:
        """Prompts for the condition-retention loss that go with `size` VQA rows (the first of the text rows)."""
        return round(size * self.mix.condition_retention_rows) if self.reference is not None else 0

    def batch(self, start: int, size: int):
        chosen = self.source.examples(start, size, MAIN)
        rngs = [choice_rng(self.seed, start + i) for i in range(len(chosen))]
        vqa = [count_questions(e, choice_rng(self.seed, start + i, COUNT_STREAM), self.mix.count_present_rate)
               for i, e in enumerate(chosen)]
        pairs = [pick_question(e, rng, self.mix.caption_rate, qa) for e, rng, qa in zip(chosen, rngs, vqa)]
        follow_ups = [pick_follow_ups(e, rng, pair, self.mix.turns, qa)
                      for e, rng, pair, qa in zip(chosen, rngs, pairs, vqa)]
        count = max(self.text_count(size), self.retention_count(size))
        text_first = start * count // max(size, 1)
        texts = [
            pick_caption(e, choice_rng(self.seed, TEXT_STREAM_OFFSET + text_first + i), self.mix.text_short_rate,
                         self.mix.text_prompt_rate)
            for i, e in enumerate(self.source.examples(text_first, count, TEXT))
        ] if count else []
        labels = {}
        if self.vision_labels is not None:
            labels["vision"] = self.vision_labels.labels(scenes_of(chosen, "understanding.vision_label_weight"))
        if self.gray is not None:
            labels["gray"] = self.gray.batch(chosen, scenes_of(chosen, "understanding.gray_rows"))
        if self.relation_labels is not None:
            labels["relation"] = self.relation_labels.labels(scenes_of(chosen, "understanding.relation_label_weight"))
        asked = [[q] + [f for f, _ in more] for (q, _), more in zip(pairs, follow_ups)]
        if self.pointer is not None:
            labels["pointer"] = self.pointer.targets(scenes_of(chosen, "understanding.pointer_weight"), asked)
        if self.word_pointer is not None:
            labels["word_pointer"] = self.word_pointer.targets(None, asked)  # from the questions alone
        for index, pointer in enumerate(self.relation_pointers):
            labels[f"relation_pointer_{index}"] = pointer.targets(
                scenes_of(chosen, "understanding.relation_pointer_weight"), asked)
        if self.relation_pair is not None:
            labels["relation_pair"] = self.relation_pair.targets(
                scenes_of(chosen, "understanding.relation_pair_weight"), asked)
        labels = labels or None
        return [e.image for e in chosen], [q for q, _ in pairs], [a for _, a in pairs], texts, labels, follow_ups

    def loss(self, batch, generator):
        images, questions, answers, texts, labels, follow_ups = batch
        ce = self.model.understanding_loss(images, questions, answers, follow_ups if any(follow_ups) else None)
        loss, logs = ce, {"ce": ce.item()}
        dense_losses = (("vision", self.vision_labels, self.mix.vision_label_weight, "vision_labels"),
                        ("pointer", self.pointer, self.mix.pointer_weight, "pointer"),
                        ("word_pointer", self.word_pointer, self.mix.word_pointer_weight, "word_pointer"),
                        ("relation", self.relation_labels, self.mix.relation_label_weight, "relation_labels"),
                        *((f"relation_pointer_{i}", pointer, self.mix.relation_pointer_weight, f"relation_pointer_{i}")
                          for i, pointer in enumerate(self.relation_pointers)),
                        ("relation_pair", self.relation_pair, self.mix.relation_pair_weight, "relation_pair"))
        for key, source, weight, name in dense_losses:
            if labels is not None and key in labels:
                dense, extra = source.loss(labels[key])
                loss, logs = loss + weight * dense, logs | {name: dense.item()} | extra
        if labels is not None and "gray" in labels:  # after the vision labels: their hook then keeps the gray tokens
            dense, extra = self.gray.loss(*labels["gray"])
            loss, logs = loss + self.mix.vision_label_weight * dense, logs | {"gray_labels": dense.item()} | extra
        text_rows = texts[:self.text_count(len(images))]
        if text_rows:
            text = self.model.backbone.language_loss(text_rows)
            loss, logs = loss + self.mix.text_weight * text, logs | {"text": text.item()}
        if self.reference is not None:
            drift = self.condition_drift(texts[:self.retention_count(len(images))])
            loss, logs = loss + self.mix.condition_retention_weight * drift, logs | {"retention": drift.item()}
        return loss, logs

    def condition_drift(self, prompts: list[str]) -> torch.Tensor:
        """Mean squared change of the prompts' query states since the stage's start, in the condition norm's
        standardised units (1.0 = as far as prompts lie from each other; a scalar)."""
        backbone = self.model.backbone
        ids, mask = backbone.generation_ids(prompts)
        states, _ = backbone.query_states_from_ids(ids, mask)
        with torch.no_grad():
            start, _ = backbone.query_states_from_ids(ids, mask, self.reference)
        scale = getattr(backbone.condition_norm, "std", None)  # (N, hidden) when the condition is standardised
        change = (states - start) / (scale.to(states.dtype) if scale is not None else start.std(dim=0) + 1e-6)
        return change.pow(2).mean()
