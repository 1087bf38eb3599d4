"""`openblip3o study`: BLIP3-o's design choices retrained at equal compute, measured, and written up."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import typer

from .errors import user_errors

DEFAULT_OUT = Path("runs/study")
DEFAULT_DOC = Path("docs/design_study.md")
DEFAULT_IMAGES = Path("docs/images")


@user_errors
def study(
    preset: str = typer.Option("mini", "--preset", help="Model preset every variant is built from."),
    budget_minutes: float = typer.Option(
        None, "--budget-minutes",
        help="Training minutes per variant (equal wall-clock: a timing probe picks the steps, and a variant that "
             "comes out more than 3% short is topped up from its checkpoint); omit for equal steps."),
    steps_scale: float = typer.Option(1.0, "--steps-scale", help="Equal-steps mode: scale of the preset's loops."),
    probe_scale: float = typer.Option(0.01, "--probe-scale", help="Budget mode: the timing probe's step scale."),
    out: Path = typer.Option(DEFAULT_OUT, "--out", help="Run folder (resumable): variants/, truth/, study_results.json."),
    doc: Path = typer.Option(DEFAULT_DOC, "--doc", help="The markdown report to write."),
    images: Path = typer.Option(DEFAULT_IMAGES, "--images", help="Where the report's plots and sample sheet go."),
    prompts_per_tag: int = typer.Option(34, "--prompts-per-tag",
                                        help="Held-out GenEval prompts per tag (34 x 6 tags = 204 prompts)."),
    n_samples: int = typer.Option(4, "--n-samples", help="Images per prompt (diversity needs at least 2)."),
    steps: int = typer.Option(None, "--steps", help="DiT sampling steps (default: the model's)."),
    decoder_steps: int = typer.Option(None, "--decoder-steps", help="Decoder steps (default: the model's)."),
    vqa_scenes: int = typer.Option(100, "--vqa-scenes", help="Held-out scenes for VQA accuracy."),
    variants: str = typer.Option(None, "--variants", help="Comma-separated subset of the variants (default: all five)."),
    seed: int = typer.Option(0, "--seed", help="Training and sampling seed."),
    init: str = typer.Option(
        None, "--init",
        help="Start every variant from this trained pipeline's backbone and autoencoders (a folder, or 'mini' for "
             "the shipped model); only generation (or joint) training is then spent per variant."),
    reference_seeds: int = typer.Option(
        2, "--reference-seeds",
        help="Training seeds of the reference variant (clip-flow, clip-flow@seed1, ...): the seed-to-seed spread "
             "shown beside the differences."),
    equal_steps_too: bool = typer.Option(
        False, "--equal-steps-too",
        help="Budget mode: also measure every variant at one common generation step count, from checkpoints of the "
             "same runs (all kept: more disk), in a table of its own."),
):
    """Train {clip, vae} x {flow_matching, mse} (sequential) and clip+flow joint; report GenEval, diversity, FD, VQA,
    and a verdict per paper claim (supported / contradicted / inconclusive, by 2 standard errors on every pair)."""
    from ..presets import get_preset
    from ..study.report import write_report
    from ..study.run import VARIANTS, StudyConfig, run_study

    get_preset(preset)
    chosen = tuple(v.strip() for v in variants.split(",") if v.strip()) if variants else tuple(VARIANTS)
    cfg = StudyConfig(preset=preset, budget_minutes=budget_minutes, steps_scale=steps_scale, probe_scale=probe_scale,
                      prompts_per_tag=prompts_per_tag, n_samples=n_samples, num_inference_steps=steps,
                      decoder_num_inference_steps=decoder_steps, vqa_scenes=vqa_scenes, seed=seed, variants=chosen,
                      init=init, reference_seeds=reference_seeds, equal_steps_too=equal_steps_too)
    results = run_study(cfg, out, log=lambda line: typer.echo(line, err=True))
    command = "openblip3o " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    path = write_report(results, out, doc, images, command=command)
    typer.echo(f"report: {path}")
