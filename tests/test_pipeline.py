"""BLIP3oPipeline end to end on the mini preset (real classes, random weights): batching, seeds, save/load."""

import json

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from openblip3o import BLIP3oPipeline
from openblip3o.cli import app
from openblip3o.config import ConfigError, merge
from openblip3o.models.inventory import component_inventory
from openblip3o.models.loading import CheckpointError
from openblip3o.presets import get_preset

FAST = {"num_inference_steps": 3, "decoder_num_inference_steps": 3, "progress": False}
PROMPTS = ["a photo of a red circle", "a photo of two stars", "a photo of a cross above a square", "a photo of a diamond"]


@pytest.fixture(scope="module")
def pipe():
    torch.manual_seed(0)
    return BLIP3oPipeline.from_preset("mini")


def seeds(*values):
    return [torch.Generator().manual_seed(v) for v in values]


def test_output_types_and_counts(pipe):
    out = pipe(PROMPTS[:2], num_images_per_prompt=2, generator=seeds(1, 2, 3, 4), **FAST)
    assert len(out.images) == 4 and all(isinstance(i, Image.Image) and i.size == (64, 64) for i in out.images)
    array = pipe(PROMPTS[0], generator=seeds(1), output_type="np", **FAST).images
    assert array.shape == (1, 64, 64, 3) and 0 <= array.min() and array.max() <= 1
    tensor = pipe(PROMPTS[0], generator=seeds(1), output_type="pt", **FAST).images
    assert tensor.shape == (1, 3, 64, 64)
    assert torch.allclose(torch.from_numpy(array).permute(0, 3, 1, 2), tensor)


def test_an_image_in_a_batch_of_16_equals_the_same_prompt_and_seed_alone(pipe):
    prompts = [PROMPTS[i % 4] for i in range(16)]
    batch = pipe(prompts, generator=seeds(*range(100, 116)), output_type="pt", **FAST).images
    for index in (0, 7, 15):
        alone = pipe(prompts[index], generator=seeds(100 + index), output_type="pt", **FAST).images
        assert torch.allclose(batch[index : index + 1], alone, atol=1e-4), (batch[index] - alone[0]).abs().max()
    assert not torch.allclose(batch[0], batch[4])  # same prompt, other seed: another image


def test_generation_path_computes_no_vocabulary_logits(pipe):
    def fail(*_):
        raise AssertionError("lm_head called on the generation path")

    objective = pipe.model.objective.config
    dropout = objective.condition_dropout
    handle = pipe.model.backbone.model.lm_head.register_forward_hook(fail)
    try:
        pipe(PROMPTS[:2], generator=seeds(1, 2), **FAST)
        # No CFG dropout here: with a batch of 2 it zeroes both conditions 1 % of the time, and then no gradient
        # reaches the queries (which the draw did, once the preset's parameter count changed the RNG's path).
        objective.condition_dropout = 0.0
        loss = pipe.model.generation_loss(torch.rand(2, 3, 64, 64), PROMPTS[:2])
        loss.backward()
    finally:
        handle.remove()
        objective.condition_dropout = dropout
    assert pipe.model.backbone.queries.grad is not None and pipe.model.backbone.queries.grad.abs().sum() > 0
    pipe.model.zero_grad()


def test_save_then_load_gives_bit_identical_outputs(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "saved")
    loaded = BLIP3oPipeline.from_pretrained(tmp_path / "saved")
    a = pipe(PROMPTS, generator=seeds(5, 6, 7, 8), output_type="pt", **FAST).images
    b = loaded(PROMPTS, generator=seeds(5, 6, 7, 8), output_type="pt", **FAST).images
    assert torch.equal(a, b)
    images = [Image.new("RGB", (64, 64), "red"), Image.new("RGB", (64, 64), "blue")]
    questions = ["what color is the circle?", "how many shapes are there?"]
    assert pipe.answer(images, questions) == loaded.answer(images, questions)


def test_a_checkpoint_missing_a_component_or_with_wrong_shapes_is_refused(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "p")
    index = json.loads((tmp_path / "p" / "model_index.json").read_text())
    index["config"]["generator"]["hidden_size"] = 96
    (tmp_path / "p" / "model_index.json").write_text(json.dumps(index))
    generator_config = json.loads((tmp_path / "p" / "generator" / "config.json").read_text())
    generator_config["hidden_size"] = 96
    (tmp_path / "p" / "generator" / "config.json").write_text(json.dumps(generator_config))
    with pytest.raises((CheckpointError, ValueError, RuntimeError), match="(?i)mismatch|size"):
        BLIP3oPipeline.from_pretrained(tmp_path / "p")
    pipe.save_pretrained(tmp_path / "q")
    for path in (tmp_path / "q" / "decoder").rglob("*"):
        if path.is_file():
            path.unlink()
    with pytest.raises(CheckpointError, match="decoder"):
        BLIP3oPipeline.from_pretrained(tmp_path / "q")
    with pytest.raises(CheckpointError, match="no such folder and no such preset"):
        BLIP3oPipeline.from_pretrained(tmp_path / "nowhere")


@pytest.mark.parametrize("kind", ["clip", "vae"])
@pytest.mark.parametrize("objective", ["flow_matching", "mse"])
def test_all_four_design_space_combinations_build_train_and_sample(kind, objective):
    config = merge(get_preset("mini"), {"target": {"kind": kind}, "objective": {"name": objective}})
    torch.manual_seed(0)
    pipe = BLIP3oPipeline.from_preset("mini", config)
    assert (pipe.model.decoder is None) == (kind == "vae")
    loss = pipe.model.generation_loss(torch.rand(2, 3, 64, 64), PROMPTS[:2])
    loss.backward()
    assert torch.isfinite(loss) and any(p.grad is not None for p in pipe.model.generator.parameters())
    images = pipe(PROMPTS[:2], generator=seeds(1, 2), **FAST).images
    assert len(images) == 2 and images[0].size == (64, 64)


def test_bad_input_gets_a_clear_error(pipe):
    with pytest.raises(ValueError, match="prompt is empty"):
        pipe([], **FAST)
    with pytest.raises(ValueError, match="one per image"):
        pipe(PROMPTS[:2], generator=seeds(1), **FAST)
    with pytest.raises(ValueError, match="output_type"):
        pipe(PROMPTS[0], output_type="jpeg", **FAST)
    with pytest.raises(ValueError, match="2 images for 1 questions"):
        pipe.answer([Image.new("RGB", (64, 64))] * 2, ["what color is the circle?"])
    with pytest.raises(ConfigError, match="unknown preset"):
        BLIP3oPipeline.from_preset("blip3o-80b")


def test_full_presets_match_the_published_sizes():
    eight = component_inventory(get_preset("blip3o-8b"))["components"]
    four = component_inventory(get_preset("blip3o-4b"))["components"]
    assert eight["backbone"]["class"] == "Qwen2_5_VLForConditionalGeneration"
    assert eight["backbone"]["parameters"] == pytest.approx(8.29e9, rel=0.002)  # Qwen2.5-VL-7B-Instruct
    assert four["backbone"]["parameters"] == pytest.approx(3.75e9, rel=0.003)  # Qwen2.5-VL-3B-Instruct
    assert eight["generator"]["class"] == "LuminaNextDiT2DModel"
    assert 1.3e9 < eight["generator"]["parameters"] < 1.6e9  # BLIP3-o: ~1.4B trainable DiT
    assert eight["decoder.unet"]["parameters"] == pytest.approx(2.57e9, rel=0.03)  # SDXL UNet
    assert eight["decoder.vae"]["parameters"] == pytest.approx(83.65e6, rel=0.01)  # SDXL VAE
    assert eight["queries"]["parameters"] == 64 * 3584


def test_info_json_is_one_object():
    result = CliRunner().invoke(app, ["info", "--preset", "blip3o-8b", "--json"])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert len(lines) == 1
    data = json.loads(lines[0])
    assert set(data) == {"components", "total_parameters"}
    assert data["total_parameters"] == sum(c["parameters"] for c in data["components"].values())
