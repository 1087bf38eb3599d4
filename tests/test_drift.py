"""`eval drift`: a pipeline against itself moves nothing; a moved language model moves the condition, the DiT's
output and the samples; the reference's two seeds lie apart."""

import json

import pytest
import torch
from typer.testing import CliRunner

from openblip3o import BLIP3oPipeline
from openblip3o.cli.main import app
from openblip3o.evaluation.drift import drift_prompts, generation_drift
from tiny import tiny_config

NUM = 3
STEPS = 4  # sampling steps: enough for the samples to depend on the condition


@pytest.fixture(scope="module")
def pipe():
    torch.manual_seed(0)
    return BLIP3oPipeline.from_preset("mini", tiny_config())


def test_a_pipeline_against_itself_drifts_nothing_and_its_seeds_lie_apart(pipe):
    result = generation_drift(pipe, pipe, num=NUM, num_inference_steps=STEPS)
    assert result["prompts"] == NUM
    assert result["condition"] == result["generator_output"] == result["samples"] == 0.0
    assert result["seed_spread"] > 0.1


def test_a_moved_language_model_moves_each_link(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "moved")
    moved = BLIP3oPipeline.from_pretrained(tmp_path / "moved")
    with torch.no_grad():
        for p in moved.model.backbone.model.model.language_model.layers[-1].parameters():
            p.add_(0.2 * torch.randn_like(p))
    result = generation_drift(moved, pipe, num=NUM, num_inference_steps=STEPS)
    assert result["condition"] > 1e-3
    assert result["generator_output"] > 1e-4
    assert result["samples"] > 1e-4


def test_drift_prompts_are_distinct_and_bad_counts_are_refused(pipe):
    prompts = drift_prompts(20)
    assert len(prompts) == len(set(prompts)) == 20
    with pytest.raises(ValueError, match="num"):
        generation_drift(pipe, pipe, num=0)


def test_the_command_prints_one_json_object(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "p")
    folder = str(tmp_path / "p")
    result = CliRunner().invoke(app, ["eval", "drift", "--model", folder, "--reference", folder, "--num", "2",
                                      "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(report) == {"condition", "generator_output", "samples", "seed_spread", "prompts"}
    assert report["samples"] == 0.0 and report["prompts"] == 2
