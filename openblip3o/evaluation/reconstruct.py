"""Autoencoder reconstruction scored by rule: are the objects of the source scene back, right in every way?

Each reconstruction is read by the ShapesWorld detector; its detections are matched one-to-one to the source
scene's objects by nearest centre (minimum total distance), and the scene is scored on four keys:

- count:    as many detections as objects, and no unrecognised blob;
- colour:   counts equal and every matched pair has the same colour;
- shape:    counts equal and every matched pair has the same class;
- position: counts equal and every matched centre lies within POSITION_TOLERANCE x image side of its object's.

`fully_correct` needs all four. Clean renders score 1.0 on every key.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from scipy.optimize import linear_sum_assignment

from ..data.shapes import Scene, ShapesWorld
from ..utils.images import to_pil
from .geneval.detector import detect

POSITION_TOLERANCE = 0.08  # of the image side: 5.1 px at 64 px (objects are 14-26 px wide)
SCORE_KEYS = ("fully_correct", "count", "colour", "shape", "position")
HELDOUT_SPLIT = "heldout"


def score_scene(scene: Scene, image: Image.Image) -> dict[str, bool]:
    """The four checks (and their conjunction) of one reconstruction against its source scene."""
    detections, blobs = detect(image)
    objects = list(scene.objects)
    counts_equal = len(detections) == len(objects)
    result = {"count": counts_equal and not blobs, "colour": counts_equal, "shape": counts_equal,
              "position": counts_equal}
    if counts_equal and objects:
        truth = np.array([(o.cx, o.cy) for o in objects], dtype=np.float64)
        found = np.array([((d.box[0] + d.box[2]) / 2, (d.box[1] + d.box[3]) / 2) for d in detections])
        distance = np.linalg.norm(truth[:, None, :] - found[None, :, :], axis=2)
        rows, cols = linear_sum_assignment(distance)
        pairs = [(objects[r], detections[c]) for r, c in zip(rows, cols)]
        result["colour"] = all(o.color == d.color for o, d in pairs)
        result["shape"] = all(o.shape == d.shape for o, d in pairs)
        side = max(image.size) if isinstance(image, Image.Image) else scene.image_size
        result["position"] = bool((distance[rows, cols] <= POSITION_TOLERANCE * side).all())
    result["fully_correct"] = all(result[k] for k in ("count", "colour", "shape", "position"))
    return result


def score_reconstructions(sources: list[Scene], images: list[Image.Image]) -> dict:
    """Mean of each check over scenes: {"fully_correct", "count", "colour", "shape", "position": float, "scenes": int}."""
    if len(sources) != len(images):
        raise ValueError(f"{len(sources)} source scenes but {len(images)} reconstructions")
    totals = dict.fromkeys(SCORE_KEYS, 0)
    for scene, image in zip(sources, images):
        for key, ok in score_scene(scene, image).items():
            totals[key] += int(ok)
    n = len(sources)
    return {**{k: (totals[k] / n if n else 0.0) for k in SCORE_KEYS}, "scenes": n}


def _reconstructor(autoencoder_or_pipeline):
    """A callable images -> images from an Autoencoder (`.reconstruct`), a BLIP3oPipeline / BLIP3oModel (its
    target encoder + decoder), or any callable."""
    model = getattr(autoencoder_or_pipeline, "model", autoencoder_or_pipeline)
    if hasattr(model, "reconstruct"):
        return model.reconstruct
    if hasattr(model, "target_encoder") and hasattr(model, "decode"):
        def reconstruct(images, num_inference_steps, guidance_scale, generator):
            tokens = model.target_encoder.encode(images)
            return model.decode(tokens, None, generator, num_inference_steps, guidance_scale, level=0.0)
        return reconstruct
    if callable(model):
        return model
    raise TypeError(f"cannot reconstruct with a {type(autoencoder_or_pipeline).__name__}")


@torch.no_grad()
def reconstruct_heldout(autoencoder_or_pipeline, num: int = 500, batch_size: int = 100, seed: int = 0,
                        num_inference_steps: int = 25, guidance_scale: float = 1.0, start: int = 0,
                        return_images: bool = False) -> dict:
    """Reconstruct held-out scenes `start .. start+num` of `ShapesWorld("heldout", seed)` in batches and score
    them. Each image gets its own noise generator (seeded by its index), so the result is batch-independent."""
    from ..models.encoders import to_tensor

    reconstruct = _reconstructor(autoencoder_or_pipeline)
    world = ShapesWorld(HELDOUT_SPLIT, seed)
    scenes, outputs = [], []
    for first in range(start, start + num, batch_size):
        indices = range(first, min(first + batch_size, start + num))
        examples = [world[i] for i in indices]
        images = to_tensor([e.image for e in examples], world.config.image_size)
        generators = [torch.Generator().manual_seed(seed * 1_000_003 + i) for i in indices]
        out = reconstruct(images, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                          generator=generators)
        scenes += [e.scene for e in examples]
        outputs += to_pil(out)
    scores = score_reconstructions(scenes, outputs)
    if return_images:
        scores["images"] = outputs
    return scores
