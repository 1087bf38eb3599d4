"""The trained mini default that ships inside the package: it loads with no download and no warning, fits the size
budget, and really works — it answers held-out questions, reconstructs held-out scenes and draws recognisable shapes.

Thresholds sit well below what the shipped model measured on the full held-out sets (README, "The shipped default"),
on small samples so the test stays fast; a model that is random, broken on loading or mis-cast fails them.
"""

import warnings

import pytest
import torch

from openblip3o import BLIP3oPipeline
from openblip3o.data.shapes import ShapesWorld
from openblip3o.evaluation.geneval.detector import detect
from openblip3o.evaluation.reconstruct import reconstruct_heldout
from openblip3o.evaluation.vqa import vqa_heldout
from openblip3o.inference.pipeline import SHIPPED_WEIGHTS

MAX_SHIPPED_BYTES = 50 * 2**20
VQA_SCENES, MIN_VQA = 30, 0.45
RECON_SCENES, MIN_RECON = 24, 0.5
PROMPTS = ["a photo of a red circle", "a photo of a green square", "a photo of a yellow star", "a photo of a blue cross"]
# Of 16 images, how many show at least one clean flat-coloured shape the scorer recognises (measured: 13). The model
# does not yet follow colour words (0 of these 16 have the asked colour; README, "The shipped default"), so colour
# is not asserted here.
MIN_WITH_OBJECTS = 8


@pytest.fixture(scope="module")
def shipped():
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*no trained 'mini' weights.*")
        return BLIP3oPipeline.from_pretrained("mini")


def test_ships_inside_the_package_within_budget(shipped):
    files = [p for p in (SHIPPED_WEIGHTS / "mini").rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= MAX_SHIPPED_BYTES
    assert not any(p.suffix in (".bin", ".pt", ".pth", ".pkl") for p in files)  # safetensors only
    assert all(p.dtype == torch.float32 for p in shipped.model.parameters())  # stored fp16, cast on load
    assert shipped.model.generator.rotary(torch.device("cpu")).is_complex()


def test_answers_held_out_questions(shipped):
    result = vqa_heldout(shipped, num=VQA_SCENES)
    assert result["accuracy"] >= MIN_VQA, result


def test_reconstructs_held_out_scenes(shipped):
    scores = reconstruct_heldout(shipped, num=RECON_SCENES, batch_size=RECON_SCENES, seed=0,
                                 num_inference_steps=shipped.config.decoder.num_inference_steps,
                                 guidance_scale=shipped.config.decoder.guidance_scale)
    assert scores["fully_correct"] >= MIN_RECON, scores


def test_draws_recognisable_shapes(shipped):
    images = shipped(PROMPTS, num_images_per_prompt=4, generator=[torch.Generator().manual_seed(i) for i in range(16)],
                     progress=False).images
    assert ShapesWorld("heldout", 0)[0].image.size == images[0].size
    with_objects = sum(bool(detect(image)[0]) for image in images)
    assert with_objects >= MIN_WITH_OBJECTS, with_objects
