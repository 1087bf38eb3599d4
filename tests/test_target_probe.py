"""The target probe: per-token class separability measures what it says."""

import torch

from openblip3o.evaluation.target_probe import object_tokens, separability
from openblip3o.data.shapes import ShapesWorld
from openblip3o.inference.pipeline import BLIP3oPipeline
from tiny import tiny_config


def test_separability_finds_a_class_direction_and_not_random_labels():
    torch.manual_seed(0)
    classes = torch.randint(0, 3, (3000,))
    features = torch.randn(3000, 8, dtype=torch.float64)
    features[:, 2] += 4.0 * classes  # class means 4 apart along one axis, unit noise
    found = separability(features, classes)
    assert found["fisher"][0] > 5 and len(found["fisher"]) == 2
    assert 0.4 < found["between_share"] < 0.9  # 10.7 of the total 17.7 variance
    shuffled = separability(features, classes[torch.randperm(3000)])
    assert shuffled["fisher"][0] < 0.05 and shuffled["between_share"] < 0.01


def test_object_tokens_are_the_covered_tokens_with_their_classes():
    model = BLIP3oPipeline.from_preset("mini", tiny_config()).model.eval()
    encoder = model.target_encoder
    with torch.no_grad():
        encoder.fit_feature_stats(torch.randn(4, encoder.grid_size ** 2, encoder.token_dim))
    world = ShapesWorld("train", 0)
    examples = [world[i] for i in range(3)]
    features, labels = object_tokens(encoder, examples)
    assert features.shape[0] == labels["shape"].shape[0] == labels["color"].shape[0] > 0
    assert (labels["shape"] > 0).all() and (labels["color"] > 0).all()
