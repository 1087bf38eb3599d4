"""`understanding.gray_rows`: grayscale copies of the batch's scenes train the tower's shape labels, colour left out."""

import numpy as np
import pytest
import torch

from openblip3o.config import ConfigError
from openblip3o.inference.pipeline import BLIP3oPipeline
from openblip3o.training.config import UnderstandingMix
from openblip3o.training.stages.gray_copies import gray_copy
from openblip3o.training.stages.understanding import UnderstandingTask
from test_vision_labels import fit_one_batch
from tiny import tiny_config


def _task(**mix):
    torch.manual_seed(0)
    model = BLIP3oPipeline.from_preset("mini", tiny_config()).model.train()
    return UnderstandingTask(model, seed=0, mix=UnderstandingMix(text_rows=0.0, **mix))


def test_a_gray_copy_keeps_the_shape_and_drops_the_colour():
    from openblip3o.data.shapes import ShapesWorld

    image = ShapesWorld("train", 0)[0].image
    gray = np.asarray(gray_copy(image))
    assert gray.shape == np.asarray(image).shape
    assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()  # no colour left
    assert np.array_equal(gray.sum(-1) > 0, np.asarray(image).sum(-1) > 0)  # every drawn pixel stays drawn


def test_gray_rows_come_in_the_configured_share_with_shape_labels_only_and_train():
    task = _task(vision_label_weight=1.0, gray_rows=0.5)
    batch = task.batch(0, 8)
    images, labels = batch[4]["gray"]
    assert len(images) == 4 and all(np.ptp(np.asarray(im), axis=-1).max() == 0 for im in images)
    assert "color" not in labels and labels["shape"].shape == (4, task.model.backbone.vision_grid ** 2)
    assert torch.equal(labels["shape"], batch[4]["vision"]["shape"][:4])  # the same scenes, the same shapes
    first, logs = fit_one_batch(task, batch, "gray_labels", steps=15)
    assert logs["gray_labels"] < 0.7 * first and "gray_color_token_acc" not in logs
    task.finish()


def test_gray_rows_need_the_vision_labels():
    with pytest.raises(ConfigError, match="gray_rows"):
        _task(gray_rows=0.5)
