"""Does the backbone's vision tower see shapes? Linear probes on the merged tokens the language model reads.

The understanding stage's logs give the tower's label heads' accuracy on training batches; this measures what any
pipeline's tower holds on scenes it never saw: for every merged token an object covers (ShapesWorld's exact
per-token labels), a linear probe fitted on the tokens of `num` training scenes names that object's shape / colour
on the tokens of unseen scenes of seen compositions (`eval`) and of held-out compositions (`heldout`). Measured on
2026-12-04: the shipped patch-4 tower reads shape at 0.73 / 0.54 (colour 1.00), and its held-out shape questions
score 0.38; a patch-2 tower 0.82 / 0.63, and 0.69. Background tokens, right almost for free, are left out (with them,
the label heads' log said 0.94).

`column` / `row`: the same probes asked where the token lies on the G x G grid (chance 1/G). Relation questions
("is the circle left of the square?") need the position, and the Qwen2.5-VL tower has only relative rotary position
inside its attention, no absolute position embedding: a probe near chance says its tokens do not carry it.
"""

from __future__ import annotations

import numpy as np
import torch

from ..data.shapes import ShapesWorld
from ..data.shapes.render import token_labels
from .condition import probe_accuracy

KINDS = ("shape", "color", "column", "row")  # labels 1-based (0 = background), as token_labels gives them
TEST_SPLITS = ("eval", "heldout")
BATCH = 64


@torch.no_grad()
def object_tower_tokens(backbone, examples) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The merged tower tokens that objects cover, (T, D) float, and their classes {kind: (T,) long}."""
    grid = backbone.vision_grid
    visual = backbone.model.model.visual
    features, labels = [], {kind: [] for kind in KINDS}
    for start in range(0, len(examples), BATCH):
        chunk = examples[start:start + BATCH]
        pixels = backbone.processor.image_processor(images=[e.image for e in chunk], return_tensors="pt")
        merged = visual(pixels["pixel_values"].to(backbone.device, visual.dtype),
                        grid_thw=pixels["image_grid_thw"].to(backbone.device)).pooler_output
        merged = merged.reshape(len(chunk), grid * grid, -1).float().cpu()  # row-major per image
        for example, row in zip(chunk, merged):
            per_token = token_labels(example.scene, grid)
            covered = per_token["shape"] > 0
            features.append(row[torch.from_numpy(covered)])
            index = np.arange(grid * grid).reshape(per_token["shape"].shape)  # the token's place, row-major
            per_token = per_token | {"column": index % grid + 1, "row": index // grid + 1}
            for kind in KINDS:
                labels[kind].append(torch.from_numpy(per_token[kind][covered].astype(np.int64)))
    return torch.cat(features), {kind: torch.cat(values) for kind, values in labels.items()}


def _scenes(split: str, seed: int, count: int) -> list:
    world = ShapesWorld(split, seed)
    return [world[i] for i in range(count)]


def vision_probe(backbone, num: int = 1024, num_test: int = 256, seed: int = 0) -> dict:
    """{kind: {split: accuracy}} for shape, colour, column and row, plus the scene counts.

    Probes are fitted on the object tokens of `num` training scenes and scored on those of `num_test` scenes of each
    test split (chance: 1/6 for shape, 1/8 for colour, 1/G for column and row).
    """
    was_training = backbone.model.training
    backbone.model.eval()
    try:
        train_x, train_y = object_tower_tokens(backbone, _scenes("train", seed, num))
        tests = {split: object_tower_tokens(backbone, _scenes(split, seed, num_test)) for split in TEST_SPLITS}
    finally:
        backbone.model.train(was_training)
    result = {kind: {split: probe_accuracy(train_x, train_y[kind] - 1, x, y[kind] - 1)
                     for split, (x, y) in tests.items()} for kind in KINDS}
    return result | {"train_scenes": num, "test_scenes": num_test}


def format_vision_probe(result: dict) -> str:
    lines = [f"{'':<8}" + "".join(f"{split:>10}" for split in TEST_SPLITS)]
    for kind in KINDS:
        lines.append(f"{kind:<8}" + "".join(f"{result[kind][split]:>10.3f}" for split in TEST_SPLITS))
    return "\n".join(lines + [f"probes fitted on {result['train_scenes']} training scenes' object tokens, "
                              f"scored on {result['test_scenes']} scenes per split"])
