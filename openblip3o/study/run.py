"""The design study: BLIP3-o's three choices, retrained at mini scale at equal compute and measured.

Variants (all with the same preset sizes and data):
  {clip, vae} x {flow_matching, mse}, trained sequentially (autoencoder -> understanding -> generation with the
  backbone frozen), plus clip + flow matching trained jointly (autoencoder -> one stage with both losses).
The reference variant (clip + flow, sequential) is trained at `reference_seeds` training seeds (rows "clip-flow",
"clip-flow@seed1", ...; images are drawn with the same sampling seed), so the seed-to-seed spread is measured.

Equal compute: with a wall-clock budget, each variant gets the same minutes of training, converted to a step scale
by a two-point timing probe and topped up after its run when it came out more than `top_up_tolerance` short (see
`budget`); without one, every variant runs the same steps (`steps_scale`). Which one was used is recorded and
reported. With `equal_steps_too`, the budget runs are also measured at one common step count from their own
checkpoints (see `equal_steps`).

Per row: mini GenEval on held-out prompts (per tag), diversity per prompt (mean pairwise absolute pixel difference
among the samples of one prompt), the Frechet distance to ground-truth renders of the same prompts in the mini CLIP
feature space (the trained clip + flow variant's target encoder, tokens mean-pooled), and VQA accuracy (with its
number of questions) on held-out scenes after understanding and after generation (or joint) training.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import time
from pathlib import Path

import torch

from ..config import ModelConfig
from .budget import _train, final_steps, probe_steps_scale, top_up
from .config import REFERENCE_VARIANT, VARIANTS, Row, StudyConfig, study_prompts, study_rows, variant_config
from .equal_steps import checkpoint_plan, measure_equal_steps
from .measures import clip_features, diversity, frechet_distance, load_samples, measure_pipeline
from .start import StartFrom

SHARED_DIR = "shared"  # with --init: the target VAE of the vae variants, trained once for both
RESULTS_FILE = "study_results.json"
TRUTH_DIR = "truth"
TRUTH_SEED_DIR = "truth-seed1"  # a second draw of ground truth: the FD and diversity floor


def hardware() -> dict:
    return {"machine": platform.machine(), "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "cuda": torch.cuda.is_available()}


def _start(cfg: StudyConfig, out: Path, model_config: ModelConfig, seed: int, log, train_config) -> StartFrom | None:
    """With --init: the row's starting pipeline, its shared parts trained now, so that no timed run includes them."""
    if cfg.init is None:
        return None
    start = StartFrom(cfg.init, cfg.preset, model_config, out / SHARED_DIR, seed, log, train_config)
    start.prepare()
    return start


def _probes(cfg: StudyConfig, out: Path, base: ModelConfig, log, train_config) -> dict[str, dict]:
    """Budget mode: every variant's probe (cached), before any variant trains, so that the equal-steps checkpoints
    can be planned from every planned step count. A further seed of a variant uses that variant's probe."""
    probes = {}
    for tag in cfg.variants if cfg.budget_minutes else ():
        model_config = variant_config(base, tag)
        start = _start(cfg, out, model_config, cfg.seed, log, train_config)
        probes[tag] = probe_steps_scale(tag, model_config, out / "variants" / tag, cfg.budget_minutes,
                                        cfg.probe_scale, cfg.seed, log, train_config, start)
    return probes


def run_study(cfg: StudyConfig, out_dir: str | Path, model_base: ModelConfig | None = None, log=print,
              train_config=None) -> dict:
    """Train, generate and measure every row; resumable (finished rows are read back). Returns the results, also
    written to `out_dir/study_results.json`. `model_base` replaces the preset's sizes and `train_config` the
    default training loops (both for tests)."""
    from ..evaluation.geneval.groundtruth import render_layout
    from ..evaluation.geneval.score import score_folder
    from ..evaluation.vqa import vqa_heldout
    from ..inference.pipeline import BLIP3oPipeline
    from ..presets import get_preset

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    base = model_base or get_preset(cfg.preset)
    records = study_prompts(cfg.prompts_per_tag)
    path = out / RESULTS_FILE
    previous = json.loads(path.read_text()) if path.is_file() else {}
    _check_resumable(out, previous, cfg, len(records))
    for folder, seed in ((TRUTH_DIR, cfg.seed), (TRUTH_SEED_DIR, cfg.seed + 1)):
        if not (out / folder).is_dir():
            render_layout(records, out / folder, n_samples=cfg.n_samples, seed=seed, progress=False)
    rows = study_rows(cfg)
    variants = {k: r for k, r in previous.get("variants", {}).items() if k in {row.key for row in rows}}
    mode = "equal wall-clock" if cfg.budget_minutes else "equal steps"
    began = time.perf_counter()
    probes = _probes(cfg, out, base, log, train_config)
    settings = train_config
    if cfg.equal_steps_too:
        settings = checkpoint_plan(train_config, [final_steps(p["steps_scale"], train_config) for p in probes.values()])
    init_vqa = None
    for row in rows:
        if row.key in variants:
            log(f"{row.key}: already measured, skipped")
            continue
        work = out / "variants" / row.key
        model_config = variant_config(base, row.tag)
        start = _start(cfg, out, model_config, row.seed, log, train_config)
        probe = probes.get(row.tag)
        scale = probe["steps_scale"] if probe else cfg.steps_scale
        vqa_before: dict = {}
        if cfg.init is not None:  # sequential and joint alike start from the init backbone's understanding
            if init_vqa is None:
                init_vqa = vqa_heldout(BLIP3oPipeline.from_pretrained(cfg.init), num=cfg.vqa_scenes, seed=cfg.seed)
            vqa_before.update(init_vqa)

        def after_understanding(pipe_dir: Path) -> None:
            if cfg.init is None:
                vqa_before.update(vqa_heldout(BLIP3oPipeline.from_pretrained(pipe_dir), num=cfg.vqa_scenes,
                                              seed=cfg.seed))

        log(f"{row.key}: training at steps scale {scale:.4f} ({mode})")
        stage_minutes = _train(row.tag, model_config, work, scale, row.seed, log, between=after_understanding,
                               train_config=settings, start=start)
        first = sum(stage_minutes.values())
        topped = None
        if cfg.budget_minutes:
            topped = top_up(row.tag, model_config, work, cfg.budget_minutes, first, probe, scale, row.seed, log,
                            settings, cfg.top_up_tolerance, cfg.max_top_ups)
            scale, first = topped["steps_scale"], topped["first_minutes"]  # a resumed run reads its first back
        measured = measure_pipeline(BLIP3oPipeline.from_pretrained(work / "pipeline"), records, work / "geneval", cfg)
        variants[row.key] = {
            "variant": row.tag, "seed": row.seed, "target": model_config.target.kind,
            "objective": model_config.objective.name, "schedule": "joint" if row.joint else "sequential",
            "steps_scale": scale, "final_steps": final_steps(scale, settings), "probe": probe,
            "train_minutes": topped["final_minutes"] if topped else first, "train_minutes_first": first,
            "top_up": topped, "stage_minutes": stage_minutes, **measured,
            "vqa_after_understanding": vqa_before.get("accuracy"),
            "images_dir": str((work / "geneval").relative_to(out)),
        }
        log(f"{row.key}: GenEval {measured['geneval']['overall']:.3f}, diversity {measured['diversity']:.4f}, "
            f"VQA {measured['vqa_final']:.3f}")
        _write(path, cfg, mode, rows, variants, records, {})
    reference = _reference(cfg, out, records, variants, score_folder(out / TRUTH_DIR, progress=False)["overall"])
    equal = None
    if cfg.equal_steps_too:
        equal = measure_equal_steps(cfg, out, rows, records, variants, previous.get("equal_steps"), settings, log)
    log(f"study: measured in {(time.perf_counter() - began) / 60:.1f} min")
    return _write(path, cfg, mode, rows, variants, records, reference, equal)


def _check_resumable(out: Path, previous: dict, cfg: StudyConfig, n_prompts: int) -> None:
    """A resumed study must measure on the prompts and samples it started with (rows read back, ground truth)."""
    truth = out / TRUTH_DIR
    rendered = len([p for p in truth.iterdir() if p.name.isdigit()]) if truth.is_dir() else n_prompts
    asked = previous.get("config", {}).get("n_samples", cfg.n_samples)
    if previous.get("prompts", n_prompts) != n_prompts or rendered != n_prompts or asked != cfg.n_samples:
        raise ValueError(f"{out} holds a study on {rendered} prompts x {asked} samples; this one asks {n_prompts} x "
                         f"{cfg.n_samples}: give another --out (or the earlier --prompts-per-tag / --n-samples)")


def _reference(cfg: StudyConfig, out: Path, records: list[dict], variants: dict, truth_geneval: float) -> dict:
    """Ground truth's own numbers, and every row's FD to it (set on the rows) in the reference variant's space."""
    from ..inference.pipeline import BLIP3oPipeline

    truth = load_samples(out / TRUTH_DIR, len(records), cfg.n_samples)
    truth_again = load_samples(out / TRUTH_SEED_DIR, len(records), cfg.n_samples)
    reference = {"diversity": diversity(truth), "geneval": truth_geneval}
    encoder_key = next((k for k in (REFERENCE_VARIANT, *variants) if k in variants and variants[k]["target"] == "clip"),
                       None)
    if encoder_key is None:
        return reference
    encoder = BLIP3oPipeline.from_pretrained(out / "variants" / encoder_key / "pipeline").model.target_encoder.eval()
    real = clip_features(encoder, truth)
    reference |= {"fd_encoder": encoder_key, "fd_truth_vs_truth": frechet_distance(clip_features(encoder, truth_again),
                                                                                   real)}
    for row in variants.values():
        samples = load_samples(out / row["images_dir"], len(records), cfg.n_samples)
        row["fd"] = frechet_distance(clip_features(encoder, samples), real)
    return reference


def _write(path: Path, cfg: StudyConfig, mode: str, rows: list[Row], variants: dict, records: list[dict],
           reference: dict, equal_steps: dict | None = None) -> dict:
    results = {"config": dataclasses.asdict(cfg), "compute": mode, "hardware": hardware(), "prompts": len(records),
               "reference": reference, "variants": {row.key: variants[row.key] for row in rows if row.key in variants}}
    if equal_steps is not None:
        results["equal_steps"] = equal_steps
    path.write_text(json.dumps(results, indent=2) + "\n")
    return results


# the study's API (the CLI and tests import these from here)
__all__ = ["VARIANTS", "StudyConfig", "run_study", "diversity", "frechet_distance", "probe_steps_scale", "top_up"]
