"""The design study: the measurements (FD, diversity, the budget probe) and a tiny end-to-end run with its report."""

import json

import numpy as np
import pytest
import torch
from tiny import tiny_config
from typer.testing import CliRunner

from openblip3o.cli import app
from openblip3o.study import run as study
from openblip3o.study.report import claims, write_report
from openblip3o.study.run import StudyConfig, diversity, frechet_distance, run_study
from openblip3o.training.config import LoopConfig, StageLoops, TrainConfig

TINY_BATCH = 4
TINY_LOOPS = TrainConfig(loops=StageLoops(**{name: LoopConfig(steps=1000, batch_size=TINY_BATCH) for name in (
    "vae", "encoder", "decoder", "understanding", "generation", "instruct")}))


def test_frechet_distance_is_zero_for_equal_sets_and_the_mean_shift_squared():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 4))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    assert frechet_distance(a + 3.0, a) == pytest.approx(4 * 9.0, rel=1e-6)
    assert np.isfinite(frechet_distance(rng.normal(size=(3, 8)), rng.normal(size=(3, 8))))  # singular covariances


def test_diversity_is_zero_for_identical_samples():
    image = np.random.default_rng(0).random((8, 8, 3)).astype(np.float32)
    assert diversity([[image, image, image]]) == 0.0
    assert diversity([[np.zeros((8, 8, 3)), np.ones((8, 8, 3))]]) == pytest.approx(1.0)


def test_budget_probe_fits_overhead_and_slope(tmp_path, monkeypatch):
    clock = [0.0]
    overhead_s, seconds_per_scale = 5.0, 1000.0

    def fake_train(tag, model_config, out, scale, seed, log, between=None, train_config=None, start=None):
        clock[0] += overhead_s + seconds_per_scale * scale
        return {}

    monkeypatch.setattr(study, "_train", fake_train)
    monkeypatch.setattr(study.time, "perf_counter", lambda: clock[0])
    result = study.probe_steps_scale("clip-flow", None, tmp_path, budget_minutes=1.0, probe_scale=0.01, seed=0,
                                     log=lambda *_: None)
    assert result["steps_scale"] == pytest.approx((60 - overhead_s) / seconds_per_scale)
    assert json.loads((tmp_path / "probe.json").read_text())["steps_scale"] == pytest.approx(result["steps_scale"])


def test_tiny_study_writes_results_and_report(tmp_path):
    cfg = StudyConfig(steps_scale=0.0005, prompts_per_tag=1, n_samples=2, num_inference_steps=2,
                      decoder_num_inference_steps=2, vqa_scenes=3, variants=("clip-flow", "vae-mse"))
    results = run_study(cfg, tmp_path / "run", model_base=tiny_config(), log=lambda *_: None, train_config=TINY_LOOPS)
    assert results["compute"] == "equal steps" and set(results["variants"]) == {"clip-flow", "vae-mse"}
    for row in results["variants"].values():
        assert 0.0 <= row["geneval"]["overall"] <= 1.0 and row["diversity"] >= 0.0 and np.isfinite(row["fd"])
        assert row["vqa_after_understanding"] is not None and row["geneval"]["images"] == 12
    assert results["reference"]["geneval"] == 1.0 and results["reference"]["fd_encoder"] == "clip-flow"
    doc = write_report(results, tmp_path / "run", tmp_path / "docs" / "design_study.md", tmp_path / "docs" / "images")
    text = doc.read_text()
    assert "| clip-flow | clip | flow_matching | sequential |" in text and "| vae-mse | vae | mse |" in text
    assert "equal steps" in text and (tmp_path / "docs" / "images" / "design_study_samples.png").is_file()
    assert len(claims(results)) == 3
    again = run_study(cfg, tmp_path / "run", model_base=tiny_config(), log=lambda *_: None, train_config=TINY_LOOPS)  # resumed: read back
    assert again["variants"]["clip-flow"]["diversity"] == results["variants"]["clip-flow"]["diversity"]


def test_study_command_rejects_unknown_variants(tmp_path):
    result = CliRunner().invoke(app, ["study", "--variants", "clip-flow,nope", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "unknown study variant 'nope'" in result.output


def test_init_starts_every_variant_from_one_backbone_and_trains_only_generation(tmp_path):
    from safetensors.torch import load_file

    from openblip3o.inference.pipeline import BLIP3oPipeline

    init = BLIP3oPipeline.from_preset("mini", tiny_config())
    init.save_pretrained(tmp_path / "init")
    cfg = StudyConfig(steps_scale=0.0005, prompts_per_tag=1, n_samples=2, num_inference_steps=2,
                      decoder_num_inference_steps=2, vqa_scenes=3, variants=("clip-mse", "vae-flow"),
                      init=str(tmp_path / "init"))
    results = run_study(cfg, tmp_path / "run", model_base=tiny_config(), log=lambda *_: None, train_config=TINY_LOOPS)
    for tag, row in results["variants"].items():
        assert row["stage_minutes"]["understanding"] == 0.0  # reused, not retrained
        assert row["stage_minutes"]["generation"] > 0.0
        trained = BLIP3oPipeline.from_pretrained(tmp_path / "run" / "variants" / tag / "pipeline").model
        for name, value in init.model.backbone.model.state_dict().items():  # frozen during generation
            assert torch.equal(trained.backbone.model.state_dict()[name], value), name
    clip = BLIP3oPipeline.from_pretrained(tmp_path / "run" / "variants" / "clip-mse" / "pipeline").model
    for name, value in init.model.target_encoder.state_dict().items():
        if name.startswith("principal."):  # unfitted in the untrained init: the generation stage fits them
            continue
        assert torch.equal(clip.target_encoder.state_dict()[name], value), name
    assert not clip.target_encoder.needs_principal_fit
    assert (tmp_path / "run" / "shared" / "vae" / "autoencoder" / "done.json").is_file()
    assert results["variants"]["vae-flow"]["stage_minutes"]["autoencoder"] == 0.0
    assert not load_file(next((tmp_path / "init" / "generator").glob("*.safetensors"))).keys().isdisjoint(
        load_file(next((tmp_path / "run" / "variants" / "clip-mse" / "pipeline" / "generator").glob("*.safetensors"))))


def test_shared_vae_is_trained_before_the_budget_probes_time_anything(tmp_path, monkeypatch):
    """A probe that also trained the shared VAE would fold its minutes into the fit and starve the vae variants."""
    from openblip3o.study.start import StartFrom

    class Stop(Exception):
        pass

    events = []
    monkeypatch.setattr(StartFrom, "shared_vae", lambda self: events.append("shared VAE"))

    def probe(tag, *args, **kwargs):
        events.append(f"probe {tag}")
        raise Stop

    monkeypatch.setattr(study, "probe_steps_scale", probe)
    cfg = StudyConfig(budget_minutes=1.0, prompts_per_tag=1, n_samples=2, vqa_scenes=3, variants=("vae-flow",),
                      init=str(tmp_path / "init"))
    with pytest.raises(Stop):
        run_study(cfg, tmp_path / "run", model_base=tiny_config(), log=lambda *_: None, train_config=TINY_LOOPS)
    assert events == ["shared VAE", "probe vae-flow"]
