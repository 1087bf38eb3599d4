"""`--backend local`: a `BLIP3oPipeline` called directly in batches (no server), and the CLIP-score hook built on the
project's target encoder.

Each item gets its own `torch.Generator` seeded with the item's seed, so an image is the same whether it is made alone,
in another batch, or in a resumed run: resuming after a kill reproduces exactly the images the kill lost.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator

from .config import LocalConfig
from .items import Item, Outcome, png_bytes

CLIP_LOGIT_SCALE = 100.0  # CLIPScore's convention: 100 x cosine similarity

Scorer = Callable[[list, list[str]], list[float]]  # (PIL images, prompts) -> one score per pair


class LocalBackend:
    """Items -> `Outcome`s, `batch_size` at a time through the pipeline."""

    def __init__(self, config: LocalConfig, pipe=None, notes: Callable[[str], None] | None = None):
        self.config = config
        if pipe is None:
            from ..inference.load import load_model

            loaded = load_model(config.model)
            pipe = loaded.pipe
            for note in loaded.notes:
                (notes or print)(f"note: {note}")
        self.pipe = pipe
        self.source = f"local:{config.model}"

    def _generate(self, batch: list[Item]) -> list:
        import torch

        c = self.config
        with torch.inference_mode():
            return self.pipe(prompt=[i.prompt for i in batch], **c.sampling.as_kwargs(),
                             generator=[torch.Generator().manual_seed(i.seed) for i in batch],
                             output_type="pil", progress=False).images

    def run(self, items: Iterable[Item]) -> Iterator[Outcome]:
        items = list(items)
        for start in range(0, len(items), self.config.batch_size):
            batch = items[start:start + self.config.batch_size]
            begin = time.monotonic()
            try:
                images = self._generate(batch)
            except Exception:  # noqa: BLE001 - one bad prompt must not sink its batch: retry the items alone
                yield from self._one_by_one(batch)
                continue
            seconds = (time.monotonic() - begin) / len(batch)
            for item, image in zip(batch, images):
                yield Outcome(item, image=image.convert("RGB"), data=png_bytes(image), seconds=seconds)

    def _one_by_one(self, batch: list[Item]) -> Iterator[Outcome]:
        for item in batch:
            try:
                image = self._generate([item])[0]
            except Exception as err:  # noqa: BLE001 - recorded in the failure log with its type and message
                yield Outcome(item, reason="local_error", detail=f"{type(err).__name__}: {err}"[:200])
            else:
                yield Outcome(item, image=image.convert("RGB"), data=png_bytes(image))


def target_encoder_scorer(pipe) -> Scorer:
    """CLIP score (100 x cosine of image and text embeddings) with the pipeline's own target encoder.

    Needs a target encoder with a text tower (the mini `CLIPModel`); texts are tokenised with the backbone's
    tokenizer and closed with the end token the text tower pools at, as in its contrastive training.
    """
    import torch

    from ..models.encoders import to_tensor

    encoder = pipe.model.target_encoder
    clip = getattr(encoder, "model", None)
    if clip is None or not hasattr(clip, "get_text_features"):
        raise ValueError("filters.clip_score_min needs a target encoder with a text tower (e.g. the mini CLIPModel); "
                         "pass your own scorer to curate(..., scorer=...) otherwise")
    tokenizer = pipe.model.backbone.tokenizer
    eos = clip.config.text_config.eos_token_id
    max_len = clip.config.text_config.max_position_embeddings

    def features(output) -> torch.Tensor:  # transformers returns a tensor or a model output, by version
        return output if isinstance(output, torch.Tensor) else output.pooler_output

    def score(images: list, prompts: list[str]) -> list[float]:
        rows = [tokenizer(p, add_special_tokens=False)["input_ids"][: max_len - 1] + [eos] for p in prompts]
        width = max(len(r) for r in rows)
        ids = torch.tensor([r + [eos] * (width - len(r)) for r in rows])
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
        pixels = encoder.preprocess(to_tensor(images, encoder.image_size))
        with torch.inference_mode():
            text = features(clip.get_text_features(input_ids=ids, attention_mask=mask))
            image = features(clip.get_image_features(pixel_values=pixels))
        cosine = torch.nn.functional.cosine_similarity(image, text, dim=-1)
        return (CLIP_LOGIT_SCALE * cosine.clamp(min=0)).tolist()

    return score
