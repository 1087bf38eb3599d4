"""Understanding: the backbone learns captioning and VQA (mini: from scratch; full scale: fine-tuning), mixed with
a text-only next-token loss on captions in the generation template.

The text loss makes the mini backbone the counterpart of a pretrained LLM: BLIP3-o freezes the backbone for
generation and relies on its states after a prompt summarising the prompt, which an answer-only loss never
teaches (measured: one-word-different prompts gave query states 0.2-2.9 % apart without it).
"""

from __future__ import annotations

from ...config import ConfigError, check_choice
from ...data.sources import MAIN, STREAM_OFFSETS, TEXT, DataSource, ShapesSource
from ...models.unified import BLIP3oModel
from ..config import UnderstandingMix
from .data import SourceState, choice_rng, pick_caption, pick_follow_ups, pick_question
from .vision_labels import VisionLabelHeads, scenes_of

# Text rows draw their examples from a stream of their own; their per-row choices are seeded past the VQA rows'.
TEXT_STREAM_OFFSET = STREAM_OFFSETS[TEXT]
TRAINABLE = ("all", "vision")  # understanding.trainable


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
        model.backbone.set_backbone_trainable(self.mix.trainable == "all")
        self.trained = model.backbone.model if self.mix.trainable == "all" else model.backbone.model.model.visual
        self.trained.requires_grad_(True)
        self.vision_labels = None
        if self.mix.vision_label_weight > 0:
            backbone = model.backbone
            self.vision_labels = VisionLabelHeads(backbone.model.model.visual,
                                                  backbone.model.config.vision_config.out_hidden_size,
                                                  backbone.vision_grid, self.mix.vision_label_balanced)

    def modules(self):
        # The queries and projector serve generation only; they stay out of this stage's optimiser.
        heads = {"vision_label_heads": self.vision_labels} if self.vision_labels is not None else {}
        return {"backbone" if self.mix.trainable == "all" else "vision": self.trained} | heads

    def finish(self) -> None:
        """Drop the training-only heads' hook from the vision tower."""
        if self.vision_labels is not None:
            self.vision_labels.remove()

    def text_count(self, size: int) -> int:
        """Text-only rows that go with `size` VQA rows."""
        return round(size * self.mix.text_rows)

    def batch(self, start: int, size: int):
        chosen = self.source.examples(start, size, MAIN)
        rngs = [choice_rng(self.seed, start + i) for i in range(len(chosen))]
        pairs = [pick_question(e, rng, self.mix.caption_rate) for e, rng in zip(chosen, rngs)]
        follow_ups = [pick_follow_ups(e, rng, pair, self.mix.turns) for e, rng, pair in zip(chosen, rngs, pairs)]
        count = self.text_count(size)
        text_first = start * count // max(size, 1)
        texts = [
            pick_caption(e, choice_rng(self.seed, TEXT_STREAM_OFFSET + text_first + i), self.mix.text_short_rate,
                         self.mix.text_prompt_rate)
            for i, e in enumerate(self.source.examples(text_first, count, TEXT))
        ] if count else []
        labels = (self.vision_labels.labels(scenes_of(chosen, "understanding.vision_label_weight"))
                  if self.vision_labels is not None else None)
        return [e.image for e in chosen], [q for q, _ in pairs], [a for _, a in pairs], texts, labels, follow_ups

    def loss(self, batch, generator):
        images, questions, answers, texts, labels, follow_ups = batch
        ce = self.model.understanding_loss(images, questions, answers, follow_ups if any(follow_ups) else None)
        loss, logs = ce, {"ce": ce.item()}
        if labels is not None:
            dense, accuracy = self.vision_labels.loss(labels)
            loss, logs = loss + self.mix.vision_label_weight * dense, logs | {"vision_labels": dense.item()} | accuracy
        if texts:
            text = self.model.backbone.language_loss(texts)
            loss, logs = loss + self.mix.text_weight * text, logs | {"text": text.item()}
        return loss, logs
