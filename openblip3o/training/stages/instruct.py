"""Instruction tuning: a small prompt-image set weighted to the categories the model is weakest at.

The set is either a folder made by `openblip3o curate` (prompt + image shards; at mini scale `--backend render`
draws each prompt exactly), or, without one, the same recipe on the fly: GenEval-style prompts of the training
split, each rendered exactly, drawn per tag with weight (1 - score) from the last evaluation (BLIP3o-60k targeted
the base model's weak areas the same way). Full fine-tuning of queries + DiT (the queries only when the generation
stage trains them too: `train_queries`), or LoRA on the DiT's attention through `peft`.
"""

from __future__ import annotations

import random

from ...data.shapes import PromptSampler, realise, render_scene
from ...data.tag_weights import tag_weights
from ...models.encoders import to_tensor
from ...models.unified import BLIP3oModel
from .foreground import checked_weight, generation_loss
from .generation import generator_modules

LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
INSTRUCT_STREAM = 11


def load_curated(path: str) -> list[tuple]:
    """(image, prompt) pairs of a curated folder's shards, in file order; damaged members are skipped and counted
    by the reader. An empty set is an error (nothing to tune on)."""
    from ...data.shards import ShardReader

    reader = ShardReader(path, shuffle=False)
    pairs = [(sample.image, sample.text) for sample in reader if sample.text]
    if not pairs:
        raise ValueError(f"{path}: no prompt-image pairs in its shards")
    return pairs


class InstructTask:
    name = "instruct"

    def __init__(self, model: BLIP3oModel, seed: int = 0, scores: dict[str, float] | None = None, lora_rank: int = 0,
                 data: str | None = None, train_queries: bool = True, foreground_weight: float = 0.0):
        """train_queries: False keeps the learnable queries as the generation stage left them, as
        `generation_train_queries: false` does there; set explicitly, since a pipeline loaded for this stage alone
        has them trainable (measured at mini scale: trained here, they took the condition's colour pair difference
        from 0.33 to 0.15). foreground_weight: object tokens' extra loss weight, as in the generation stage
        (foreground.py; ShapesWorld's plain background)."""
        self.model, self.seed, self.scores = model, seed, scores
        self.foreground_weight = checked_weight(foreground_weight)
        self.curated = load_curated(data) if data is not None else None
        self.weights = tag_weights(scores)
        self.tags, self.tag_probs = list(self.weights), list(self.weights.values())
        self.prompts = PromptSampler("train")
        self.lora_rank = lora_rank
        model.backbone.set_backbone_trainable(False)
        model.backbone.queries.requires_grad_(train_queries)
        if lora_rank > 0:
            from peft import LoraConfig, get_peft_model

            config = LoraConfig(r=lora_rank, lora_alpha=lora_rank, target_modules=LORA_TARGETS, lora_dropout=0.0)
            model.generator.dit = get_peft_model(model.generator.dit, config)

    def modules(self):
        if self.lora_rank > 0:
            return {"generator": self.model.generator}  # peft leaves only the LoRA weights trainable
        return generator_modules(self.model)

    @property
    def size(self) -> int | None:
        """Items in the curated set (None: drawn on the fly, unbounded)."""
        return None if self.curated is None else len(self.curated)

    def example(self, index: int):
        rng = random.Random((self.seed << 36) + (index << 4) + INSTRUCT_STREAM)
        if self.curated is not None:  # the set already carries its category weights
            return self.curated[rng.randrange(len(self.curated))]
        tag = rng.choices(self.tags, self.tag_probs)[0]
        record = self.prompts.sample(tag, rng)
        return render_scene(realise(record, rng, forbid_heldout=True)), record["prompt"]

    def batch(self, start: int, size: int):
        pairs = [self.example(i) for i in range(start, start + size)]
        return to_tensor([p[0] for p in pairs], self.model.config.target.image_size), [p[1] for p in pairs]

    def loss(self, batch, generator):
        images, prompts = batch
        loss = generation_loss(self.model, images, prompts, generator, self.foreground_weight)
        return loss, {"flow": loss.item()}

    def finish(self) -> None:
        """Merge LoRA weights into the DiT so the saved pipeline is plain diffusers weights."""
        if self.lora_rank > 0:
            self.model.generator.dit = self.model.generator.dit.merge_and_unload()
