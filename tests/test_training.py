"""Training stages on a tiny configuration: every stage's loss falls on a fixed batch; the run orchestration;
config validation."""

import json

import pytest
import torch
from typer.testing import CliRunner

from openblip3o.cli import app
from openblip3o.config import ConfigError, load_yaml_overrides
from openblip3o.inference.pipeline import BLIP3oPipeline
from openblip3o.training.config import LoopConfig, TrainConfig
from openblip3o.training.engine import train
from openblip3o.training.run import run_training
from openblip3o.training.stages.autoencoder import autoencoder_tasks
from openblip3o.training.stages.generation import GenerationTask
from openblip3o.data.tag_weights import tag_weights
from openblip3o.training.stages.instruct import InstructTask
from openblip3o.training.stages.joint import JointTask
from openblip3o.training.stages.understanding import UnderstandingTask
from tiny import tiny_config

BATCH = 8


class FixedBatch:
    """The same batch on every step: a smoke test that the stage can learn at all."""

    def __init__(self, task):
        self.task, self.name = task, task.name

    def modules(self):
        return self.task.modules()

    def batch(self, start, size):
        return self.task.batch(0, size)

    def loss(self, batch, generator):
        return self.task.loss(batch, torch.Generator().manual_seed(0))


def falls(task, tmp_path, steps=25, lr=3e-3, factor=0.8):
    train(FixedBatch(task), LoopConfig(steps=steps, batch_size=BATCH, lr=lr, warmup_steps=2, log_every=1,
                                       checkpoint_every=steps), tmp_path / task.name, progress=False)
    losses = [json.loads(line)["loss"] for line in (tmp_path / task.name / "log.jsonl").read_text().splitlines()]
    assert sum(losses[-3:]) / 3 < factor * sum(losses[:3]) / 3, losses
    return losses


@pytest.fixture()
def model():
    torch.manual_seed(0)
    return BLIP3oPipeline.from_preset("mini", tiny_config()).model.train()


def test_autoencoder_sub_stages_learn(model, tmp_path):
    for name, make in autoencoder_tasks(model).items():
        task = make()
        falls(task, tmp_path, steps=20 if name != "encoder" else 25)
        task.finish()
    assert not any(p.requires_grad for p in model.target_encoder.parameters())


def test_understanding_learns(model, tmp_path):
    falls(UnderstandingTask(model), tmp_path)


def test_generation_learns_with_the_backbone_frozen(model, tmp_path):
    before = {k: v.clone() for k, v in model.backbone.model.state_dict().items()}
    queries = model.backbone.queries.detach().clone()
    falls(GenerationTask(model), tmp_path)
    assert all(torch.equal(before[k], v) for k, v in model.backbone.model.state_dict().items())
    assert not torch.equal(queries, model.backbone.queries)  # the queries do learn


def test_joint_trains_both_losses(model, tmp_path):
    falls(JointTask(model), tmp_path)


def test_instruct_full_and_lora(model, tmp_path):
    assert tag_weights({"position": 1.0, "counting": 0.0})["counting"] > tag_weights({"position": 1.0})["position"]
    falls(InstructTask(model, scores={"counting": 0.0}), tmp_path / "full")
    task = InstructTask(model, lora_rank=4)
    trainable = [n for n, p in model.generator.named_parameters() if p.requires_grad]
    assert trainable and all("lora" in n for n in trainable)
    # LoRA starts from B = 0 and moves a few thousand weights: it falls, more slowly.
    falls(task, tmp_path / "lora", lr=3e-2, factor=0.95)
    task.finish()
    assert type(model.generator.dit).__name__ == "LuminaNextDiT2DModel"  # merged back: plain diffusers weights


def test_run_training_saves_a_loadable_pipeline_and_skips_done_stages(tmp_path):
    lines = []
    summary = run_training(TrainConfig(), tmp_path, ["understanding"], steps_scale=0.003, progress=False,
                           log=lines.append, model_config=tiny_config())
    assert summary["understanding"]["result"]["steps"] >= 1
    assert BLIP3oPipeline.from_pretrained(tmp_path / "pipeline").config.backbone.num_queries == 8
    run_training(TrainConfig(), tmp_path, ["understanding"], steps_scale=0.003, progress=False, log=lines.append,
                 model_config=tiny_config())
    assert "understanding: already done, skipped" in lines


def test_training_config_rejects_unknown_keys_and_wrong_types(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("loops:\n  generation:\n    step: 10\n")
    with pytest.raises(ConfigError, match="unknown key loops.generation.step;"):
        load_yaml_overrides(TrainConfig(), bad)
    bad.write_text("loops:\n  generation:\n    lr: fast\n")
    result = CliRunner().invoke(app, ["train", "--config", str(bad), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert result.output.strip() == "error: loops.generation.lr: expected float, got str 'fast'"


def test_instruct_from_a_curated_folder(model, tmp_path):
    """The instruct stage trains on `openblip3o curate --backend render` output: its batches are that set's pairs."""
    from openblip3o.curation import curate, load_config
    from openblip3o.models.encoders import to_tensor

    curate(load_config(None, out_dir=str(tmp_path / "set"), scale="mini", num_items=12, backend="render",
                       progress=False))
    task = InstructTask(model, data=str(tmp_path / "set"))
    assert task.size == 12
    images, prompts = task.batch(0, BATCH)
    by_prompt = {text: image for image, text in task.curated}
    assert all(p in by_prompt for p in prompts)
    assert torch.equal(images[0], to_tensor([by_prompt[prompts[0]]], images.shape[-1])[0])
    falls(task, tmp_path / "curated")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no .tar shards"):
        InstructTask(model, data=str(empty))


def test_the_registry_gives_each_stage_its_parts(model):
    from types import SimpleNamespace

    from openblip3o.training.registry import STAGES, parts

    assert parts("autoencoder", model) == ["vae", "encoder", "decoder"]
    assert parts("autoencoder", SimpleNamespace(decoder=None)) == ["vae"]  # a VAE-kind target: its own VAE alone
    assert parts("generation", model) == ["generation"]
    assert {STAGES[name].loop for name in ("generation", "joint")} == {"generation"}
    assert STAGES["generation"].sample is not None and STAGES["understanding"].sample is None


def test_retraining_the_decoder_alone_keeps_the_encoder_and_the_dit_target_space(tmp_path):
    """`--stage autoencoder --parts decoder`: the decoder learns again on the run's pipeline; the VAE, the encoder and
    its fitted statistics (the DiT's target space) stay bit for bit; a rerun skips it; bad parts are refused."""
    run_training(TrainConfig(), tmp_path, ["autoencoder"], steps_scale=0.003, progress=False, log=lambda *_: None,
                 model_config=tiny_config())
    before = BLIP3oPipeline.from_pretrained(tmp_path / "pipeline").model
    config = TrainConfig(decoder_condition_noise=1.0)
    summary = run_training(config, tmp_path, ["autoencoder"], steps_scale=0.003, progress=False,
                           log=lambda *_: None, only_parts=["decoder"])
    assert summary["autoencoder"]["parts"] == ["decoder"]
    assert list(summary["autoencoder"]["result"]) == ["decoder"]
    after = BLIP3oPipeline.from_pretrained(tmp_path / "pipeline").model
    for name in ("target_encoder", "generator"):
        old, new = getattr(before, name).state_dict(), getattr(after, name).state_dict()
        assert old.keys() == new.keys() and all(torch.equal(old[k], new[k]) for k in old), name
    old, new = before.decoder.state_dict(), after.decoder.state_dict()
    assert all(torch.equal(old[k], new[k]) for k in old if k.startswith("vae."))
    assert any(not torch.equal(old[k], new[k]) for k in old if k.startswith("unet."))
    lines = []
    run_training(config, tmp_path, ["autoencoder"], steps_scale=0.003, progress=False, log=lines.append,
                 only_parts=["decoder"])
    assert "autoencoder: already done, skipped" in lines
    with pytest.raises(ValueError, match="unknown part 'dit' of stage 'autoencoder'; its parts: vae, encoder, decoder"):
        run_training(config, tmp_path, ["autoencoder"], only_parts=["dit"])
    with pytest.raises(ValueError, match="parts apply to one stage that has sub-stages"):
        run_training(config, tmp_path, ["generation"], only_parts=["decoder"])
    with pytest.raises(ValueError, match="is missing"):
        run_training(config, tmp_path / "fresh", ["autoencoder"], only_parts=["decoder"])


def test_instruct_keeps_the_queries_when_the_recipe_freezes_them(model, tmp_path):
    """`generation_train_queries: false` holds in the instruct stage too, even on a pipeline loaded with trainable
    queries (as `--stage instruct` alone loads it); the DiT still learns."""
    model.backbone.queries.requires_grad_(True)
    queries = model.backbone.queries.detach().clone()
    dit = {k: v.clone() for k, v in model.generator.state_dict().items()}
    train(InstructTask(model, train_queries=False), LoopConfig(steps=3, batch_size=BATCH, warmup_steps=1),
          tmp_path / "instruct", progress=False)
    assert torch.equal(queries, model.backbone.queries)
    assert any(not torch.equal(v, dit[k]) for k, v in model.generator.state_dict().items())
