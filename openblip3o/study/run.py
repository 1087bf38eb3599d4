"""The design study: BLIP3-o's three choices, retrained at mini scale at equal compute and measured.

Variants (all with the same preset sizes and data):
  {clip, vae} x {flow_matching, mse}, trained sequentially (autoencoder -> understanding -> generation with the
  backbone frozen), plus clip + flow matching trained jointly (autoencoder -> one stage with both losses).

Equal compute: with a wall-clock budget, each variant gets the same minutes of training, converted to a step scale
by a two-point timing probe (the variant trained at `probe_scale` and twice that: time = overhead + slope x scale);
without one, every variant runs the same steps (`steps_scale`). Which one was used is recorded and reported.

Per variant: mini GenEval on a small held-out prompt set (per tag), diversity (mean pairwise absolute pixel
difference among the samples of one prompt), the Frechet distance to ground-truth renders of the same prompts in
the mini CLIP feature space (the trained clip + flow variant's target encoder, tokens mean-pooled), and VQA
accuracy on held-out scenes after understanding and after generation (or joint) training.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import shutil
import time
from itertools import combinations
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..config import ModelConfig, SamplingSettings, merge
from ..data.shapes import evaluation_set
from ..data.shapes.prompts import TAGS
from ..evaluation.geneval.layout import sample_path
from .start import StartFrom

# tag -> (model overrides, joint training)
VARIANTS: dict[str, tuple[dict, bool]] = {
    "clip-flow": ({"target": {"kind": "clip"}, "objective": {"name": "flow_matching"}}, False),
    "clip-mse": ({"target": {"kind": "clip"}, "objective": {"name": "mse"}}, False),
    "vae-flow": ({"target": {"kind": "vae"}, "objective": {"name": "flow_matching"}}, False),
    "vae-mse": ({"target": {"kind": "vae"}, "objective": {"name": "mse"}}, False),
    "clip-flow-joint": ({"target": {"kind": "clip"}, "objective": {"name": "flow_matching"}}, True),
}
SHARED_DIR = "shared"  # with --init: the target VAE of the vae variants, trained once for both
REFERENCE_VARIANT = "clip-flow"  # its target encoder is the FD feature space; its VQA is the joint run's baseline
SEQUENTIAL_FIRST = ["autoencoder", "understanding"]
SEQUENTIAL_SECOND = ["generation"]
JOINT_STAGES = ["autoencoder", "generation"]  # run_training turns understanding + generation into "joint"
RESULTS_FILE = "study_results.json"
TRUTH_DIR = "truth"
TRUTH_SEED_DIR = "truth-seed1"  # a second draw of ground truth: the FD and diversity floor
PROBE_FILE = "probe.json"
FD_EPS = 1e-6


@dataclasses.dataclass
class StudyConfig:
    preset: str = "mini"
    budget_minutes: float | None = None  # training minutes per variant; None = equal steps
    steps_scale: float = 1.0  # the step scale of every variant when there is no budget
    probe_scale: float = 0.01  # timing probe (budget mode): the variant trained at this scale and twice it
    prompts_per_tag: int = 8
    n_samples: int = 4
    num_inference_steps: int | None = None  # DiT steps (default: the model's)
    decoder_num_inference_steps: int | None = None
    vqa_scenes: int = 100
    batch_size: int = 16
    seed: int = 0
    variants: tuple[str, ...] = tuple(VARIANTS)
    init: str | None = None  # a trained pipeline (folder or "mini"): its backbone and autoencoders are reused

    def __post_init__(self):
        unknown = [v for v in self.variants if v not in VARIANTS]
        if unknown:
            raise ValueError(f"unknown study variant {unknown[0]!r}; variants: {', '.join(VARIANTS)}")
        if self.budget_minutes is not None and self.budget_minutes <= 0:
            raise ValueError("--budget-minutes must be positive")
        if self.steps_scale <= 0 or self.probe_scale <= 0:
            raise ValueError("step scales must be positive")
        if self.prompts_per_tag < 1 or self.n_samples < 2:
            raise ValueError("the study needs at least one prompt per tag and two samples per prompt (diversity)")


def variant_config(base: ModelConfig, tag: str) -> ModelConfig:
    return merge(base, VARIANTS[tag][0])


def study_prompts(per_tag: int) -> list[dict]:
    """The first `per_tag` held-out prompts of every GenEval tag, in tag order."""
    records = evaluation_set("heldout")
    return [r for tag in TAGS for r in [r for r in records if r["tag"] == tag][:per_tag]]


# --- training ----------------------------------------------------------------------------------------------------
def _train(tag: str, model_config: ModelConfig, out: Path, scale: float, seed: int, log, between=None,
           train_config=None, start=None) -> dict:
    """Train one variant; `between(pipe_dir)` runs after understanding (sequential only). Returns stage minutes.
    `train_config` replaces the default loops (tests); its seed and joint flag are set here. `start(out)`, when
    given, writes the variant's starting pipeline and marks the stages it replaces done (see `StartFrom`)."""
    from .scorers import training_scorers
    from ..training.config import TrainConfig
    from ..training.run import run_training

    if start is not None:
        start(out)
    joint = VARIANTS[tag][1]
    settings = dataclasses.replace(train_config or TrainConfig(), seed=seed, joint=joint)
    # the same prompt checks and instruct probe as `openblip3o train` (their scorers live in evaluation)
    scorers = training_scorers()
    quiet = dict(steps_scale=scale, progress=False, log=log, model_config=model_config, scorers=scorers)
    if joint:
        summary = run_training(settings, out, JOINT_STAGES, **quiet)
    else:
        summary = run_training(settings, out, SEQUENTIAL_FIRST, **quiet)
        if between is not None:
            between(out / "pipeline")
        summary |= run_training(settings, out, SEQUENTIAL_SECOND, **quiet)
    return {stage: s["minutes"] for stage, s in summary.items()}


def probe_steps_scale(tag: str, model_config: ModelConfig, work: Path, budget_minutes: float, probe_scale: float,
                      seed: int, log, train_config=None, start=None) -> dict:
    """The step scale whose training takes `budget_minutes`: time(scale) = overhead + slope x scale, fitted on
    two probe runs (at probe_scale and 2 x probe_scale). Cached in `work/probe.json`."""
    cache = work / PROBE_FILE
    if cache.is_file():
        return json.loads(cache.read_text())
    times = []
    for n, scale in enumerate((probe_scale, 2 * probe_scale)):
        began = time.perf_counter()
        _train(tag, model_config, work / f"probe{n}", scale, seed, log=lambda *_: None, train_config=train_config,
               start=start)
        times.append(time.perf_counter() - began)
        shutil.rmtree(work / f"probe{n}", ignore_errors=True)
    slope = (times[1] - times[0]) / probe_scale
    overhead = times[0] - slope * probe_scale
    budget_s = budget_minutes * 60
    if slope > 0 and budget_s > overhead:
        scale = (budget_s - overhead) / slope
    else:  # timing noise swamped the probe: fall back to proportionality with the longer probe
        scale = 2 * probe_scale * budget_s / times[1]
    result = {"probe_scale": probe_scale, "probe_seconds": times, "overhead_s": overhead, "seconds_per_scale": slope,
              "steps_scale": scale}
    work.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(result, indent=2) + "\n")
    log(f"{tag}: probe {times[0]:.1f}s / {times[1]:.1f}s -> steps scale {scale:.4f}")
    return result


# --- measurements ------------------------------------------------------------------------------------------------
def load_samples(root: Path, n_prompts: int, n_samples: int) -> list[list[np.ndarray]]:
    """Images of a GenEval layout as float arrays in [0, 1], grouped by prompt."""
    return [[np.asarray(Image.open(sample_path(root, i, j)).convert("RGB"), dtype=np.float32) / 255.0
             for j in range(n_samples)] for i in range(n_prompts)]


def diversity(groups: list[list[np.ndarray]]) -> float:
    """Mean over prompts of the mean pairwise absolute pixel difference among that prompt's samples (0-1)."""
    per_prompt = [np.mean([np.abs(a - b).mean() for a, b in combinations(group, 2)]) for group in groups]
    return float(np.mean(per_prompt))


@torch.no_grad()
def clip_features(encoder, groups: list[list[np.ndarray]], batch_size: int = 64) -> np.ndarray:
    """(N, D): the target encoder's tokens of every image, mean-pooled."""
    flat = [image for group in groups for image in group]
    features = []
    for first in range(0, len(flat), batch_size):
        batch = torch.from_numpy(np.stack(flat[first : first + batch_size])).permute(0, 3, 1, 2).contiguous()
        features.append(encoder.encode(batch).mean(dim=1).double().numpy())
    return np.concatenate(features)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^1/2), with a small ridge where the product is singular."""
    from scipy import linalg

    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    root = linalg.sqrtm(cov_a @ cov_b)
    if not np.isfinite(root).all():
        ridge = np.eye(cov_a.shape[0]) * FD_EPS
        root = linalg.sqrtm((cov_a + ridge) @ (cov_b + ridge))
    root = np.real(root)
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(root))


def hardware() -> dict:
    return {"machine": platform.machine(), "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "cuda": torch.cuda.is_available()}


# --- the study ---------------------------------------------------------------------------------------------------
def run_study(cfg: StudyConfig, out_dir: str | Path, model_base: ModelConfig | None = None, log=print,
              train_config=None) -> dict:
    """Train, generate and measure every variant; resumable (finished variants are read back). Returns the
    results, also written to `out_dir/study_results.json`. `model_base` replaces the preset's sizes and
    `train_config` the default training loops (both for tests)."""
    from ..evaluation.geneval.generate import generate_layout
    from ..evaluation.geneval.groundtruth import render_layout
    from ..evaluation.geneval.score import score_folder
    from ..evaluation.vqa import vqa_heldout
    from ..inference.pipeline import BLIP3oPipeline
    from ..presets import get_preset

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    base = model_base or get_preset(cfg.preset)
    records = study_prompts(cfg.prompts_per_tag)
    for folder, seed in ((TRUTH_DIR, cfg.seed), (TRUTH_SEED_DIR, cfg.seed + 1)):
        if not (out / folder).is_dir():
            render_layout(records, out / folder, n_samples=cfg.n_samples, seed=seed, progress=False)
    path = out / RESULTS_FILE
    previous = json.loads(path.read_text()) if path.is_file() else {}
    variants = {t: r for t, r in previous.get("variants", {}).items() if t in cfg.variants}
    mode = "equal wall-clock" if cfg.budget_minutes else "equal steps"
    began = time.perf_counter()
    init_vqa = None
    for tag in cfg.variants:
        if tag in variants:
            log(f"{tag}: already measured, skipped")
            continue
        work = out / "variants" / tag
        model_config = variant_config(base, tag)
        start = None
        if cfg.init is not None:
            start = StartFrom(cfg.init, cfg.preset, model_config, out / SHARED_DIR, cfg.seed, log, train_config)
            start.prepare()  # shared parts are trained before the probes, so no probe times them
        probe = None
        scale = cfg.steps_scale
        if cfg.budget_minutes:
            probe = probe_steps_scale(tag, model_config, work, cfg.budget_minutes, cfg.probe_scale, cfg.seed, log,
                                      train_config, start)
            scale = probe["steps_scale"]
        vqa_before: dict = {}
        if cfg.init is not None:  # sequential and joint alike start from the init backbone's understanding
            if init_vqa is None:
                init_vqa = vqa_heldout(BLIP3oPipeline.from_pretrained(cfg.init), num=cfg.vqa_scenes, seed=cfg.seed)
            vqa_before.update(init_vqa)

        def after_understanding(pipe_dir: Path) -> None:
            if cfg.init is None:
                vqa_before.update(vqa_heldout(BLIP3oPipeline.from_pretrained(pipe_dir), num=cfg.vqa_scenes, seed=cfg.seed))

        log(f"{tag}: training at steps scale {scale:.4f} ({mode})")
        train_began = time.perf_counter()
        stage_minutes = _train(tag, model_config, work, scale, cfg.seed, log, between=after_understanding,
                               train_config=train_config, start=start)
        train_minutes = (time.perf_counter() - train_began) / 60
        pipe = BLIP3oPipeline.from_pretrained(work / "pipeline")
        vqa_after = vqa_heldout(pipe, num=cfg.vqa_scenes, seed=cfg.seed)
        generate_layout(pipe, records, work / "geneval", n_samples=cfg.n_samples, batch_size=cfg.batch_size,
                        seed=cfg.seed, sampling=SamplingSettings(num_inference_steps=cfg.num_inference_steps,
                        decoder_num_inference_steps=cfg.decoder_num_inference_steps), grid=False, progress=False)
        geneval = score_folder(work / "geneval", progress=False)
        samples = load_samples(work / "geneval", len(records), cfg.n_samples)
        variants[tag] = {
            "target": model_config.target.kind, "objective": model_config.objective.name,
            "schedule": "joint" if VARIANTS[tag][1] else "sequential", "steps_scale": scale, "probe": probe,
            "train_minutes": train_minutes, "stage_minutes": stage_minutes, "geneval": geneval,
            "diversity": diversity(samples),
            "vqa_after_understanding": vqa_before.get("accuracy"), "vqa_final": vqa_after["accuracy"],
            "images_dir": str((work / "geneval").relative_to(out)),
        }
        log(f"{tag}: GenEval {geneval['overall']:.3f}, diversity {variants[tag]['diversity']:.4f}, "
            f"VQA {vqa_after['accuracy']:.3f}")
        _write(path, cfg, mode, variants, records, {})
    truth = load_samples(out / TRUTH_DIR, len(records), cfg.n_samples)
    truth_again = load_samples(out / TRUTH_SEED_DIR, len(records), cfg.n_samples)
    reference = {"diversity": diversity(truth), "geneval": score_folder(out / TRUTH_DIR, progress=False)["overall"]}
    encoder_tag = next((t for t in (REFERENCE_VARIANT, *variants) if t in variants and variants[t]["target"] == "clip"),
                       None)
    if encoder_tag is not None:
        encoder = BLIP3oPipeline.from_pretrained(out / "variants" / encoder_tag / "pipeline").model.target_encoder.eval()
        real = clip_features(encoder, truth)
        reference |= {"fd_encoder": encoder_tag, "fd_truth_vs_truth": frechet_distance(clip_features(encoder, truth_again), real)}
        for tag, row in variants.items():
            row["fd"] = frechet_distance(clip_features(encoder, load_samples(out / row["images_dir"], len(records),
                                                                             cfg.n_samples)), real)
    log(f"study: measured in {(time.perf_counter() - began) / 60:.1f} min")
    return _write(path, cfg, mode, variants, records, reference)


def _write(path: Path, cfg: StudyConfig, mode: str, variants: dict, records: list[dict], reference: dict) -> dict:
    results = {"config": dataclasses.asdict(cfg), "compute": mode, "hardware": hardware(), "prompts": len(records),
               "reference": reference, "variants": {t: variants[t] for t in cfg.variants if t in variants}}
    path.write_text(json.dumps(results, indent=2) + "\n")
    return results
