"""The autoencoder's GenEval ceiling: what the decoder draws from the tokens of a scene that satisfies each prompt.

For every record of a GenEval metadata file, a ground-truth ShapesWorld scene (the placements `openblip3o data
render` makes) is encoded to target tokens and decoded back to pixels; the rule scorer then reads the result as it
reads generated images. With `round_trip` the tokens first pass through the generator's target space
(standardised, projected on the kept principal components, and back): the best the DiT can hand the decoder. So per
tag, GenEval(generated) <= this ceiling up to sampling noise; the gap between the two is the generator's share of
what is lost, the ceiling's gap to 1 the autoencoder's.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ...data.shapes.render import render_scene
from ...data.shapes.sampler import realise
from ...data.shapes.world import WorldConfig
from ...utils.images import to_pil
from ..condition import _eval_mode, _model
from .groundtruth import sample_rng
from .score import score_image, summarize


@torch.no_grad()
def autoencoder_ceiling(pipe_or_model, records: list[dict], n_samples: int = 1, seed: int = 0,
                        num_inference_steps: int | None = None, guidance_scale: float | None = None,
                        round_trip: bool = True, batch_size: int = 64,
                        progress: Callable | None = None) -> dict:
    """GenEval summary {"overall", "tags", "images"} of the reconstructions of ground-truth renders, plus
    "ground_truth": the same scorer on the renders themselves (1.0 unless the scorer or the renders are at fault)
    and "round_trip". Sample j of record i is placed as `render_layout` places it, and decoded from the noise seed
    i * n_samples + j, so the result does not depend on the batch size."""
    if n_samples < 1 or batch_size < 1:
        raise ValueError("n_samples and batch_size must be at least 1")
    model = _model(pipe_or_model)
    world = WorldConfig()
    jobs = [(i, j, rec) for i, rec in enumerate(records) for j in range(n_samples)]
    rows, truth_rows = [], []
    with _eval_mode(model):
        for first in range(0, len(jobs), batch_size):
            chunk = jobs[first:first + batch_size]
            renders = [render_scene(realise(rec, sample_rng(seed, i, j), world), world) for i, j, rec in chunk]
            images = _to_model_tensor(model, renders)
            tokens = model.target_encoder.encode(images)
            if round_trip:
                tokens = model.target_encoder.denormalize(model.target_encoder.normalize(tokens))
            generators = [torch.Generator().manual_seed(i * n_samples + j) for i, j, _ in chunk]
            decoded = to_pil(model.decode(tokens, generator=generators, num_inference_steps=num_inference_steps,
                                          guidance_scale=guidance_scale, level=0.0))  # exact tokens
            for (_, _, rec), render, image in zip(chunk, renders, decoded):
                rows.append({"tag": rec["tag"], "correct": score_image(rec, image)[0]})
                truth_rows.append({"tag": rec["tag"], "correct": score_image(rec, render)[0]})
            if progress is not None:
                progress(len(chunk))
    return summarize(rows) | {"ground_truth": summarize(truth_rows)["overall"], "round_trip": round_trip}


def _to_model_tensor(model, renders) -> torch.Tensor:
    from ...models.encoders import to_tensor

    device = next(model.target_encoder.parameters()).device
    return to_tensor(renders, model.config.target.image_size).to(device)
