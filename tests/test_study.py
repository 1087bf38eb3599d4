"""The design study: the measurements (FD, diversity, the budget probe and top-up), the verdict rule, the equal-steps
checkpoints, and tiny end-to-end runs with their report."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny import tiny_config
from typer.testing import CliRunner

from openblip3o.cli import app
from openblip3o.study import budget
from openblip3o.study import run as study
from openblip3o.study.equal_steps import checkpoints, pick_checkpoints, pipeline_at
from openblip3o.study import report
from openblip3o.study.report import claims, write_report
from openblip3o.study.run import StudyConfig, diversity, frechet_distance, run_study
from openblip3o.study.verdicts import CONTRADICTED, INCONCLUSIVE, NOT_MEASURED, NOT_TESTED, SUPPORTED, judge
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

    monkeypatch.setattr(budget, "_train", fake_train)
    monkeypatch.setattr(budget.time, "perf_counter", lambda: clock[0])
    result = budget.probe_steps_scale("clip-flow", None, tmp_path, budget_minutes=1.0, probe_scale=0.01, seed=0,
                                     log=lambda *_: None)
    assert result["steps_scale"] == pytest.approx((60 - overhead_s) / seconds_per_scale)
    assert json.loads((tmp_path / "probe.json").read_text())["steps_scale"] == pytest.approx(result["steps_scale"])


def test_tiny_study_writes_results_and_report(tmp_path):
    cfg = StudyConfig(steps_scale=0.0005, prompts_per_tag=1, n_samples=2, num_inference_steps=2,
                      decoder_num_inference_steps=2, vqa_scenes=3, variants=("clip-flow", "vae-mse"))
    results = run_study(cfg, tmp_path / "run", model_base=tiny_config(), log=lambda *_: None, train_config=TINY_LOOPS)
    # the reference variant is trained at a second seed (reference_seeds defaults to 2), listed right after it
    assert results["compute"] == "equal steps"
    assert list(results["variants"]) == ["clip-flow", "clip-flow@seed1", "vae-mse"]
    assert results["variants"]["clip-flow@seed1"]["seed"] == 1 and results["variants"]["clip-flow"]["seed"] == 0
    for row in results["variants"].values():
        assert 0.0 <= row["geneval"]["overall"] <= 1.0 and row["diversity"] >= 0.0 and np.isfinite(row["fd"])
        assert row["vqa_after_understanding"] is not None and row["geneval"]["images"] == 12
        assert len(row["diversity_per_prompt"]) == 6  # one prompt per tag
        assert row["diversity"] == pytest.approx(np.mean(row["diversity_per_prompt"]))
        assert row["vqa_questions"] > 0 and row["top_up"] is None  # no budget: nothing to top up
    assert results["reference"]["geneval"] == 1.0 and results["reference"]["fd_encoder"] == "clip-flow"
    images = tmp_path / "docs" / "images"
    doc = write_report(results, tmp_path / "run", tmp_path / "docs" / "design_study.md", images)
    text = doc.read_text()
    assert "| clip-flow | 0 | clip | flow_matching | sequential |" in text and "| vae-mse | 0 | vae | mse |" in text
    assert "equal steps" in text and "clip-flow − clip-flow@seed1 (seed spread) | GenEval" in text
    assert "every pair of variants that bears on it" in text  # the rule is written in the report
    assert len(claims(results)) == 3
    # the sample sheet: a band above the tiles carries the prompts (dark text on white), then 4 rows of tiles
    sheet = np.asarray(Image.open(images / "design_study_samples.png").convert("L"))
    band = sheet.shape[0] - 4 * report.SHEET_TILE
    assert band > 0 and (sheet[:band, 2 * report.SHEET_TILE:] < 128).any()
    again = run_study(cfg, tmp_path / "run", model_base=tiny_config(), log=lambda *_: None,
                      train_config=TINY_LOOPS)  # resumed: read back
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


def _row(geneval: float = 0.5, diversity_values=None, vqa: float = 0.6, before: float = 0.6) -> dict:
    """A measured row as run_study writes it: 204 prompts x 4 images, 500 VQA questions."""
    values = [0.1] * 204 if diversity_values is None else list(diversity_values)
    return {"geneval": {"overall": geneval, "images": 816, "tags": {}}, "diversity": float(np.mean(values)),
            "diversity_per_prompt": values, "vqa_final": vqa, "vqa_questions": 500, "vqa_after_understanding": before}


def _alignment(clip_flow, vae_flow, clip_mse, vae_mse) -> str:
    v = {"clip-flow": _row(clip_flow), "vae-flow": _row(vae_flow), "clip-mse": _row(clip_mse), "vae-mse": _row(vae_mse)}
    return judge(v)[0].verdict


def test_a_claim_is_supported_only_when_every_pair_is_beyond_two_standard_errors_its_way():
    # 816 images: a GenEval difference near 0.5 needs about 0.05 to exceed 2 SE
    assert _alignment(0.6, 0.4, 0.5, 0.3) == SUPPORTED
    assert _alignment(0.4, 0.6, 0.3, 0.5) == CONTRADICTED
    assert _alignment(0.6, 0.4, 0.3, 0.5) == INCONCLUSIVE  # mixed: the pairs disagree
    assert _alignment(0.4, 0.6, 0.50, 0.49) == INCONCLUSIVE  # one pair against, one within noise: not contradicted
    assert _alignment(0.6, 0.4, 0.52, 0.50) == INCONCLUSIVE  # one pair within 2 SE
    assert judge({"clip-flow": _row(0.6)})[0].verdict == NOT_MEASURED


def test_diversity_verdict_pairs_by_prompt():
    """Per-prompt diversity varies far more across prompts than between the objectives: only the paired standard
    error sees a 0.02 difference that every prompt shows."""
    rng = np.random.default_rng(0)
    base = rng.uniform(0.0, 0.5, 204)
    flow = base + 0.02 + rng.normal(0.0, 0.005, 204)
    v = {"clip-flow": _row(diversity_values=flow), "clip-mse": _row(diversity_values=base),
         "vae-flow": _row(diversity_values=flow), "vae-mse": _row(diversity_values=base)}
    assert judge(v)[1].verdict == SUPPORTED
    v["vae-mse"] = _row(diversity_values=flow)  # one objective pair the same: inconclusive
    assert judge(v)[1].verdict == INCONCLUSIVE


def test_understanding_verdict_compares_sequential_with_joint_vqa():
    def verdict(joint_vqa, before=0.6):
        return judge({"clip-flow": _row(vqa=0.6, before=before), "clip-flow-joint": _row(vqa=joint_vqa)})[2].verdict

    assert verdict(0.45) == SUPPORTED  # 500 questions: 2 SE of the difference is about 0.06
    assert verdict(0.58) == INCONCLUSIVE
    assert verdict(0.75) == CONTRADICTED
    assert verdict(0.45, before=0.02) == NOT_TESTED  # no understanding was learned to keep
    assert judge({"clip-flow": _row()})[2].verdict == NOT_MEASURED


def test_top_up_brings_a_short_variant_within_tolerance_and_leaves_one_within_it_alone(tmp_path, monkeypatch):
    probe = {"probe_scale": 0.01, "probe_seconds": [15.0, 25.0], "overhead_s": 5.0, "seconds_per_scale": 1000.0}
    resume_overhead_s = 1.0  # a continuation costs this beyond its steps (less than the probe's fitted overhead)
    trained = {"scale": 0.05}
    calls = []

    def fake_continue(tag, model_config, out, scale, seed, log, train_config=None):
        assert scale > trained["scale"]  # a top-up only ever trains further
        calls.append(scale)
        seconds = resume_overhead_s + probe["seconds_per_scale"] * (scale - trained["scale"])
        trained["scale"] = scale
        return {"generation": seconds / 60}

    monkeypatch.setattr(budget, "continue_training", fake_continue)
    quiet = dict(budget_minutes=1.0, probe=probe, scale=0.05, seed=0, log=lambda *_: None)
    short = budget.top_up("vae-flow", None, tmp_path / "short", first_minutes=50 / 60, **quiet)
    assert calls and short["within_tolerance"] and abs(short["final_minutes"] - 1.0) <= 0.03
    assert short["first_minutes"] == pytest.approx(50 / 60) and len(short["rounds"]) == len(calls)
    assert short["final_steps"] == budget.final_steps(trained["scale"]) > budget.final_steps(0.05)
    assert json.loads((tmp_path / "short" / "top_up.json").read_text()) == short  # a resumed study reads it back
    calls.clear()
    near = budget.top_up("clip-flow", None, tmp_path / "near", first_minutes=59 / 60, **quiet)  # 1.7 % short
    assert calls == [] and near["rounds"] == [] and near["final_minutes"] == pytest.approx(59 / 60)
    assert near["within_tolerance"] and near["steps_scale"] == 0.05


def test_continue_training_resumes_the_last_stage_for_more_steps(tmp_path):
    """The top-up's trainer: the done generation stage runs again from its checkpoint, up to the larger step count."""
    from openblip3o.study.config import variant_config
    from openblip3o.training.run import DONE

    model_config, quiet = variant_config(tiny_config(), "clip-flow"), dict(seed=0, log=lambda *_: None)
    budget._train("clip-flow", model_config, tmp_path, 0.002, train_config=TINY_LOOPS, **quiet)
    first = budget.final_steps(0.002, TINY_LOOPS)
    minutes = budget.continue_training("clip-flow", model_config, tmp_path, 0.004, train_config=TINY_LOOPS, **quiet)
    done = json.loads((tmp_path / "generation" / DONE).read_text())
    assert set(minutes) == {"generation"} and minutes["generation"] == done["minutes"] > 0
    assert done["result"]["resumed_from"] == first and done["result"]["steps"] == budget.final_steps(0.004, TINY_LOOPS)
    assert max(checkpoints(tmp_path / "generation")) == done["result"]["steps"] > first


def test_pick_checkpoints_takes_one_step_that_every_run_has():
    def runs(**steps):
        return {key: {s: tmp / key / f"step-{s:08d}" for s in found} for key, found in steps.items()}

    tmp = Path("runs-root")
    available = runs(a=[100, 200, 250], b=[100, 200], c=[100, 200, 300])
    assert pick_checkpoints(available) == (200, {key: tmp / key / "step-00000200" for key in "abc"})
    # the shortest run was topped up past the planned step: the largest step every run has below its final one
    assert pick_checkpoints(runs(a=[100, 200, 250], b=[100, 210], c=[100, 200, 300]))[0] == 100
    assert pick_checkpoints(runs(a=[100], b=[])) is None
    assert pick_checkpoints(runs(a=[100], b=[150])) is None


def test_pipeline_at_a_checkpoint_restores_that_step_with_its_ema(tmp_path):
    from openblip3o.inference.pipeline import BLIP3oPipeline
    from openblip3o.training.run import run_training

    generation = LoopConfig(steps=3, batch_size=TINY_BATCH, ema_decay=0.5, checkpoint_every=1, keep_checkpoints=10)
    config = dataclasses.replace(TINY_LOOPS, loops=dataclasses.replace(TINY_LOOPS.loops, generation=generation))
    run_training(config, tmp_path, ["generation"], progress=False, log=lambda *_: None, model_config=tiny_config())
    found = checkpoints(tmp_path / "generation")
    assert sorted(found) == [1, 2, 3]
    saved = BLIP3oPipeline.from_pretrained(tmp_path / "pipeline").model.generator.state_dict()
    final = pipeline_at(tmp_path, "generation", found[3], 0, config, log=lambda *_: None).model.generator.state_dict()
    early = pipeline_at(tmp_path, "generation", found[1], 0, config, log=lambda *_: None).model.generator.state_dict()
    for name, value in saved.items():  # the stage saved its EMA weights: the last checkpoint's EMA is them
        assert torch.equal(final[name], value), name
    assert any(not torch.equal(early[name], value) for name, value in saved.items())


def test_tiny_budget_study_tops_up_and_measures_equal_steps_from_the_runs_checkpoints(tmp_path):
    cfg = StudyConfig(budget_minutes=0.05, probe_scale=0.002, prompts_per_tag=1, n_samples=2, num_inference_steps=2,
                      decoder_num_inference_steps=2, vqa_scenes=3, variants=("clip-flow",), equal_steps_too=True)
    results = run_study(cfg, tmp_path / "run", model_base=tiny_config(), log=lambda *_: None, train_config=TINY_LOOPS)
    rows = results["variants"]
    assert list(rows) == ["clip-flow", "clip-flow@seed1"] and results["compute"] == "equal wall-clock"
    for row in rows.values():
        top = row["top_up"]
        assert row["train_minutes_first"] == top["first_minutes"] and row["train_minutes"] == top["final_minutes"]
        assert row["final_steps"] == top["final_steps"] >= budget.final_steps(row["probe"]["steps_scale"], TINY_LOOPS)
    equal = results["equal_steps"]
    assert set(equal["variants"]) == set(rows)
    assert equal["step"] <= min(row["final_steps"] for row in rows.values())
    for key, row in equal["variants"].items():
        assert row["step"] == equal["step"] and row["final_steps"] == rows[key]["final_steps"]
        assert row["geneval"]["images"] == 12 and (tmp_path / "run" / row["images_dir"]).is_dir()
    text = write_report(results, tmp_path / "run", tmp_path / "docs" / "study.md", tmp_path / "docs").read_text()
    assert "## Equal steps" in text and f"step **{equal['step']}**" in text


def test_equal_steps_too_needs_a_budget():
    with pytest.raises(ValueError, match="needs --budget-minutes"):
        StudyConfig(equal_steps_too=True)


def test_a_study_folder_of_other_prompts_is_refused_before_anything_runs(tmp_path):
    """The default prompt set grew (8 -> 34 per tag): an old run folder must not mix its rows into a new study."""
    (tmp_path / "study_results.json").write_text(json.dumps({"prompts": 48, "config": {"n_samples": 4}}))
    with pytest.raises(ValueError, match="holds a study on"):
        run_study(StudyConfig(prompts_per_tag=1, n_samples=4), tmp_path, model_base=tiny_config(), log=lambda *_: None)
    assert not (tmp_path / "truth").exists()
