"""The reconstruction scorer: clean renders are perfect, blanks fail, and each kind of damage fails its own key."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from PIL import Image

from openblip3o.data.shapes import COLORS, SHAPES, ShapesWorld, render_scene
from openblip3o.evaluation.reconstruct import (
    POSITION_TOLERANCE,
    reconstruct_heldout,
    score_reconstructions,
    score_scene,
)

KEYS = {"fully_correct", "count", "colour", "shape", "position", "scenes"}


@pytest.fixture(scope="module")
def heldout():
    world = ShapesWorld("heldout", seed=0)
    return [world[i] for i in range(60)]


def _replace(scene, index, **changes):
    objects = list(scene.objects)
    objects[index] = dataclasses.replace(objects[index], **changes)
    return dataclasses.replace(scene, objects=tuple(objects))


def _only_fails(scene, image, key):
    result = score_scene(scene, image)
    assert result[key] is False and result["fully_correct"] is False, result
    assert all(v for k, v in result.items() if k not in (key, "fully_correct")), result


def test_clean_renders_score_one(heldout):
    scores = score_reconstructions([e.scene for e in heldout], [e.image for e in heldout])
    assert set(scores) == KEYS
    assert scores["scenes"] == len(heldout)
    assert all(scores[k] == 1.0 for k in KEYS - {"scenes"}), scores


def test_blank_images_score_zero(heldout):
    blank = Image.new("RGB", (64, 64), (0, 0, 0))
    scores = score_reconstructions([e.scene for e in heldout], [blank] * len(heldout))
    assert all(scores[k] == 0.0 for k in KEYS - {"scenes"}), scores


def test_moved_object_fails_position_only(heldout):
    scene = next(e.scene for e in heldout if len(e.scene.objects) == 1)
    obj = scene.objects[0]
    shift = int(POSITION_TOLERANCE * 64) + 3
    step = shift if obj.cx - obj.radius - shift < 1 else -shift  # move away from the nearer edge
    moved = _replace(scene, 0, cx=obj.cx + step)
    assert 0 <= moved.objects[0].box[0] and moved.objects[0].box[2] <= 64
    _only_fails(scene, render_scene(moved), "position")
    small = _replace(scene, 0, cx=obj.cx + (1 if step > 0 else -1))  # within the tolerance
    assert score_scene(scene, render_scene(small))["fully_correct"]


def test_recoloured_object_fails_colour_only(heldout):
    scene = next(e.scene for e in heldout if len(e.scene.objects) >= 2)
    other = next(c for c in COLORS if c != scene.objects[1].color)
    _only_fails(scene, render_scene(_replace(scene, 1, color=other)), "colour")


def test_reshaped_object_fails_shape_only(heldout):
    scene = next(e.scene for e in heldout if len(e.scene.objects) >= 2)
    other = next(s for s in SHAPES if s != scene.objects[0].shape)
    _only_fails(scene, render_scene(_replace(scene, 0, shape=other)), "shape")


def test_missing_object_fails_count_and_all_matched_keys(heldout):
    scene = next(e.scene for e in heldout if len(e.scene.objects) >= 2)
    fewer = dataclasses.replace(scene, objects=scene.objects[1:])
    result = score_scene(scene, render_scene(fewer))
    assert not any(result.values()), result


def test_reconstruct_heldout_with_a_perfect_autoencoder():
    class Identity:
        def reconstruct(self, images, num_inference_steps, guidance_scale, generator):
            assert len(generator) == images.shape[0]
            return images

    scores = reconstruct_heldout(Identity(), num=10, batch_size=4)
    assert scores == {"fully_correct": 1.0, "count": 1.0, "colour": 1.0, "shape": 1.0, "position": 1.0, "scenes": 10}
    noisy = reconstruct_heldout(lambda images, **_: torch.zeros_like(images), num=4, batch_size=4)
    assert noisy["count"] == 0.0
