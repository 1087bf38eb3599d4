"""Per-token loss weights: the weighted MSE both objectives use, and the foreground map of ShapesWorld images."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from openblip3o.config import ObjectiveConfig
from openblip3o.data.shapes import Scene, ShapeObject, ShapesWorld
from openblip3o.data.shapes.render import render_labels, render_scene
from openblip3o.inference.pipeline import BLIP3oPipeline
from openblip3o.objectives.flow_matching import FlowMatching
from openblip3o.objectives.mse import MSERegression
from openblip3o.objectives.weighting import weighted_mse
from openblip3o.training.stages.foreground import foreground_weights
from openblip3o.training.stages.generation import GenerationTask
from openblip3o.training.stages.instruct import InstructTask
from tiny import tiny_config


def as_batch(image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]


def test_weights_of_ones_are_the_plain_mse_and_larger_weights_count_their_positions_more():
    torch.manual_seed(0)
    prediction, target = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    torch.testing.assert_close(weighted_mse(prediction, target, torch.ones(2, 1, 4, 4)), F.mse_loss(prediction, target))
    torch.testing.assert_close(weighted_mse(prediction, target, None), F.mse_loss(prediction, target))
    error_at_one = target.clone()
    error_at_one[:, :, 0, 0] += 1.0  # squared error 1 at one of 16 positions, 0 elsewhere
    weights = torch.ones(2, 1, 4, 4)
    assert weighted_mse(error_at_one, target, weights).item() == pytest.approx(1 / 16)
    weights[:, :, 0, 0] = 5.0
    assert weighted_mse(error_at_one, target, weights).item() == pytest.approx(5 / 20)
    assert weighted_mse(error_at_one, target, torch.zeros(2, 1, 4, 4)).item() == 0.0  # no weight: no loss, no NaN


@pytest.mark.parametrize("shape", [(2, 3, 4, 4), (2, 1, 8, 8), (1, 1, 4, 4), (2, 1, 16)])
def test_weights_of_the_wrong_shape_are_refused(shape):
    with pytest.raises(ValueError, match="loss weights must be"):
        weighted_mse(torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 4, 4), torch.ones(shape))


def exact_but_one_position(objective):
    """A network whose prediction is its objective's target for x0 = 0, except 1.0 too high at grid position (0, 0)."""
    def network(x_t, timestep, cond, mask):
        if objective.config.name == "mse":
            out = torch.zeros_like(x_t)  # the target is x0 = 0
        else:  # x_t = sigma * eps when x0 = 0, so the velocity eps - x0 is x_t / sigma
            out = x_t / (timestep.view(-1, 1, 1, 1) / objective.config.num_train_timesteps)
        out[:, :, 0, 0] += 1.0
        return out
    return network


@pytest.mark.parametrize("objective", [FlowMatching(ObjectiveConfig()), MSERegression(ObjectiveConfig(name="mse"))])
def test_objectives_weight_their_loss_by_position(objective):
    network, target, cond = exact_but_one_position(objective), torch.zeros(2, 3, 4, 4), torch.zeros(2, 1, 8)
    up, off = torch.ones(2, 1, 4, 4), torch.ones(2, 1, 4, 4)
    up[:, :, 0, 0], off[:, :, 0, 0] = 15.0, 0.0

    def loss(weights=None):
        return objective.loss(network, target, cond, None, torch.Generator().manual_seed(0), weights).item()

    assert loss() == pytest.approx(1 / 16, rel=1e-3)
    assert loss(up) == pytest.approx(15 / 30, rel=1e-3)
    assert loss(off) == pytest.approx(0.0, abs=1e-5)


def test_foreground_weights_follow_the_drawn_pixels():
    square = ShapeObject(shape="square", color="blue", size="large", cx=16, cy=16, radius=8)  # pixels 8..23
    scene = Scene(objects=(square,), image_size=64)
    weights = foreground_weights(as_batch(render_scene(scene)), grid_size=8, weight=4.0)[0, 0]
    assert weights.shape == (8, 8)
    assert (weights[1:3, 1:3] == 5.0).all()  # cells of 8 px fully inside the square: 1 + 4
    assert weights[3:, :].eq(1.0).all() and weights[:, 3:].eq(1.0).all() and weights[0, 0] == 1.0
    world = ShapesWorld("train", 0)
    for index in range(10):  # on the world's own scenes the share of object pixels is the label map's
        scene = world[index].scene
        share = torch.from_numpy((render_labels(scene) > 0).astype(np.float32))[None, None]
        expected = 1.0 + 2.0 * F.avg_pool2d(share, scene.image_size // 8)
        torch.testing.assert_close(foreground_weights(as_batch(render_scene(scene)), 8, 2.0), expected)


@pytest.mark.parametrize("task_class", [GenerationTask, InstructTask])
def test_stages_weight_object_tokens_only_when_asked(task_class):
    torch.manual_seed(0)
    # eval mode: in training the condition norm's statistics move with every batch, so two losses of one batch differ
    model = BLIP3oPipeline.from_preset("mini", tiny_config()).model.eval()
    with pytest.raises(ValueError, match="generation_foreground_weight"):
        task_class(model, seed=0, foreground_weight=-1.0)
    batch = task_class(model, seed=0).batch(0, 4)

    def loss(weight: float) -> torch.Tensor:
        return task_class(model, seed=0, foreground_weight=weight).loss(batch, torch.Generator().manual_seed(1))[0]

    plain, weighted = loss(0.0), loss(8.0)
    assert plain.item() == task_class(model, seed=0).loss(batch, torch.Generator().manual_seed(1))[0].item()
    assert abs(weighted.item() - plain.item()) > 1e-3 * plain.item()
    weighted.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.generator.parameters())
