"""Generation: the backbone frozen, the queries, projector and DiT learn to produce target tokens from captions.

Captions are mostly long, ~10% short (BLIP3-o's mix); at mini scale a share are the GenEval-style prompt of the
scene too, the form the evaluation asks in.
"""

from __future__ import annotations

import torch

from ...data.shapes.negatives import binding_negative
from ...data.sources import FIT, MAIN, STREAM_OFFSETS, DataSource, ShapesSource
from ...models.condition_norm import ConditionStandardizer
from ...models.unified import BLIP3oModel
from .data import SourceState, choice_rng, image_batch, pick_caption
from .foreground import binding_losses, checked_weight, generation_loss

PROMPT_RATE = 0.4
# The condition norm's statistics (and the target's principal components) are fitted on this many examples of the
# stage's mix, drawn from the source's FIT stream (a fresh draw apart from training, the same every time); the
# per-example caption choices there are seeded past any training position.
FIT_BATCHES, FIT_BATCH_SIZE, FIT_OFFSET = 16, 64, STREAM_OFFSETS[FIT]
SAMPLE_PROMPTS = (
    "a photo of a red circle",
    "a photo of three stars",
    "a photo of a square left of a triangle",
    "a photo of a blue cross and a yellow diamond",
)


class GenerationTask(SourceState):
    name = "generation"

    def __init__(self, model: BLIP3oModel, seed: int = 0, short_rate: float = 0.1, prompt_rate: float = PROMPT_RATE,
                 train_backbone: bool = False, trainable_layers: int = 0, train_queries: bool = True,
                 source: DataSource | None = None, foreground_weight: float = 0.0, binding_weight: float = 0.0):
        """trainable_layers: the last K language layers (and the final norm) learn with the generation loss while
        the rest of the backbone stays frozen (0 = BLIP3-o's fully frozen backbone). train_queries: False keeps the
        learnable queries at their values (the projector and DiT still learn). source: image + caption rows
        (default ShapesWorld's train split). foreground_weight: object tokens' extra loss weight (foreground.py;
        0 = every token alike, BLIP3-o). binding_weight: the weight of the binding hinge (each caption against its
        words bound differently, data/shapes/negatives.py; 0 = none, BLIP3-o)."""
        self.binding_weight = checked_weight(binding_weight, "generation_binding_weight")
        self.model, self.seed, self.foreground_weight = model, seed, checked_weight(foreground_weight)
        self.short_rate, self.prompt_rate = short_rate, prompt_rate
        self.source = source or ShapesSource("train", seed)
        model.backbone.set_backbone_trainable(train_backbone)
        model.backbone.queries.requires_grad_(train_queries)
        self.tail = None
        if trainable_layers > 0 and not train_backbone:
            language = model.backbone.model.model.language_model
            self.tail = torch.nn.ModuleList([*language.layers[-trainable_layers:], language.norm])
            self.tail.requires_grad_(True)
        model.target_encoder.requires_grad_(False)
        if model.decoder is not None:
            model.decoder.requires_grad_(False)
        encoder = model.target_encoder
        if getattr(encoder, "needs_principal_fit", False):  # a target encoder saved before they were configured
            device = encoder.feature_mean.device
            with torch.no_grad():  # encoded a batch at a time: the images are never all in memory at once
                encoder.fit_principal_components(torch.cat([
                    encoder.encode(self.rows(i * FIT_BATCH_SIZE, FIT_BATCH_SIZE, FIT)[0].to(device))
                    for i in range(FIT_BATCHES)]))
        norm = model.backbone.condition_norm
        if isinstance(norm, ConditionStandardizer) and not bool(norm.fitted):  # fitted once, then fixed
            model.backbone.fit_condition_norm(
                self.rows(i * FIT_BATCH_SIZE, FIT_BATCH_SIZE, FIT)[1] for i in range(FIT_BATCHES))

    def modules(self):
        return generator_modules(self.model) | ({"backbone_tail": self.tail} if self.tail is not None else {})

    def rows(self, start: int, size: int, stream: str = MAIN):
        """Images (B, 3, S, S) and their captions (long, short or prompt, drawn per example) of a source stream."""
        return self._rows(start, size, stream)[:2]

    def _rows(self, start: int, size: int, stream: str):
        """`rows` and each caption's binding negative, drawn after the caption from the same generator (so the
        captions are those of a run without negatives)."""
        chosen = self.source.examples(start, size, stream)
        first = STREAM_OFFSETS[stream] + start  # the choices' seed position: apart per stream
        rngs = [choice_rng(self.seed, first + i) for i in range(len(chosen))]
        captions = [pick_caption(e, rng, self.short_rate, self.prompt_rate) for e, rng in zip(chosen, rngs)]
        negatives = [binding_negative(c, rng) for c, rng in zip(captions, rngs)] if self.binding_weight > 0 else None
        return image_batch(chosen, self.model.config.target.image_size), captions, negatives

    def batch(self, start: int, size: int):
        """(images, captions), and their binding negatives third when the binding loss is on."""
        images, captions, negatives = self._rows(start, size, MAIN)
        return (images, captions) if negatives is None else (images, captions, negatives)

    def loss(self, batch, generator):
        if len(batch) == 2:
            images, captions = batch
            loss = generation_loss(self.model, images, captions, generator, self.foreground_weight)
            return loss, {"flow": loss.item()}
        flow, hinge = binding_losses(self.model, *batch, generator, self.foreground_weight)
        return flow + self.binding_weight * hinge, {"flow": flow.item(), "binding": hinge.item()}


def generator_modules(model: BLIP3oModel) -> dict[str, torch.nn.Module]:
    """What generation training optimises: the queries, the projector(s), the condition norm and the DiT."""
    modules = {"queries": QueryHolder(model.backbone), "projector": model.backbone.projector,
               "condition_norm": model.backbone.condition_norm, "generator": model.generator}
    for name in ("word_projector", "state_projector"):
        if getattr(model.backbone, name) is not None:
            modules[name] = getattr(model.backbone, name)
    return modules


@torch.no_grad()
def sample_grid(model: BLIP3oModel, step: int, out_dir) -> None:
    """A contact sheet of a few fixed prompts, written during training to out_dir/samples/step-NNNNNN.png."""
    from pathlib import Path

    from ...utils.images import contact_sheet, to_pil

    gens = [torch.Generator().manual_seed(i) for i in range(len(SAMPLE_PROMPTS))]
    was_training = model.training
    model.eval()
    tokens = model.sample_tokens(list(SAMPLE_PROMPTS), generator=gens, num_inference_steps=20)
    images = model.decode(tokens, generator=gens, num_inference_steps=20)
    model.train(was_training)
    samples = Path(out_dir) / "samples"
    samples.mkdir(parents=True, exist_ok=True)
    contact_sheet(to_pil(images), list(SAMPLE_PROMPTS), columns=4, tile=128).save(samples / f"step-{step:06d}.png")


class QueryHolder(torch.nn.Module):
    """Registers the backbone's query parameter as a module of its own for the optimiser and checkpoints."""

    def __init__(self, backbone):
        super().__init__()
        self.queries = backbone.queries
