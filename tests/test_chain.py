"""`eval chain` reads the DiT's tokens and the decoded images apart: a generator that draws each prompt's object
scores high at the token link; one that draws the same object for every prompt scores chance there."""

import pytest
import torch

from openblip3o import BLIP3oPipeline
from openblip3o.data.shapes import SHAPES
from openblip3o.data.shapes.render import render_scene
from openblip3o.data.shapes.scene import Scene, ShapeObject
from openblip3o.evaluation.chain import chain_report, single_object_records
from openblip3o.models.encoders import to_tensor

PROBE_SCENES = 300
CENTRE, RADIUS = 32, 11


def drawn_tokens(model, prompts: list[str]) -> torch.Tensor:
    """The target encoder's raw tokens (B, N, D) of a clean render of each prompt's single object."""
    by_prompt = {r["prompt"]: r["include"][0] for r in single_object_records()}
    images = []
    for prompt in prompts:
        obj = by_prompt[prompt]
        scene = Scene((ShapeObject(obj["class"], obj["color"], "large", CENTRE, CENTRE, RADIUS),), 64)
        images.append(render_scene(scene))
    encoder = model.target_encoder
    return encoder.encode(to_tensor(images, encoder.image_size))


@pytest.fixture(scope="module")
def model():
    return BLIP3oPipeline.from_pretrained("mini").model


def test_a_generator_that_draws_each_prompt_scores_high_at_both_links(model, monkeypatch):
    monkeypatch.setattr(model, "sample_tokens", lambda prompts, **_: drawn_tokens(model, prompts))
    report = chain_report(model, seeds=1, num=PROBE_SCENES)
    assert report["tokens"]["shape"] >= 0.9 and report["tokens"]["color"] >= 0.9, report
    assert report["image"]["color"] >= 0.9, report  # the decoder draws true tokens' colour
    assert report["prompts"] == len(single_object_records())


def test_a_generator_that_draws_one_object_for_every_prompt_scores_chance_at_the_token_link(model, monkeypatch):
    records = single_object_records()
    first = records[0]["prompt"]  # a red circle
    monkeypatch.setattr(model, "sample_tokens", lambda prompts, **_: drawn_tokens(model, [first] * len(prompts)))
    report = chain_report(model, seeds=1, num=PROBE_SCENES)
    same_shape = sum(r["include"][0]["class"] == records[0]["include"][0]["class"] for r in records) / len(records)
    same_colour = sum(r["include"][0]["color"] == records[0]["include"][0]["color"] for r in records) / len(records)
    assert report["tokens"]["shape"] == pytest.approx(same_shape), report  # 1 / len(SHAPES) of the prompts
    assert report["tokens"]["color"] == pytest.approx(same_colour), report
    assert same_shape == pytest.approx(1 / len(SHAPES), abs=0.05)


def test_rejects_no_seeds(model):
    with pytest.raises(ValueError, match="at least 1"):
        chain_report(model, seeds=0)


def test_the_command_prints_the_documented_json_and_refuses_no_seeds():
    import json

    from typer.testing import CliRunner

    from openblip3o.cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["eval", "chain", "--seeds", "1", "--num", "50", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output[result.output.index('{"tokens"'):])  # after any loading bar on stderr
    assert set(report) == {"tokens", "image", "prompts", "seeds", "probe_scenes"}
    assert set(report["tokens"]) == {"shape", "color"} and set(report["image"]) == {"shape", "color", "rule"}
    refused = runner.invoke(app, ["eval", "chain", "--seeds", "0"])
    assert refused.exit_code != 0 and "at least 1" in refused.output
