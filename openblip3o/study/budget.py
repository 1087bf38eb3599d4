"""Training a study row, and equal wall-clock: the timing probe that picks a step scale, and the top-up after.

The probe times the variant at `probe_scale` and twice that and fits time = overhead + slope x scale. A two-point
fit on a busy machine misses (issue 16: the vae variants came out at 8.6-8.8 of 10 minutes), so after the real run
a variant whose training minutes fall short of the budget by more than the tolerance is **topped up**: its last
stage (generation, or joint) is continued on the same run, from its saved checkpoint, for the missing minutes
converted to steps with the probe's seconds per scale. This was preferred to a third probe point because it
measures the run itself rather than predicting it again, and costs no retraining. What it changes: the continued
stage resumes its optimiser, EMA and data position exactly, but its cosine learning-rate schedule is stretched to
the new step count, so the learning rate rises from the first run's floor to the stretched schedule's value at
that step (a small warm restart, e.g. from 0.10 to about 0.12 of the peak for a 10 % top-up) — not the schedule a
single run of the final length would have had. A top-up cannot shorten a run that came out long.

Training minutes are the stages' own minutes (their `done.json`), so evaluation run between stages does not count
and a resumed variant reads back the time it was trained in.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path

from ..config import ModelConfig
from ..training.config import TrainConfig
from ..training.run import DONE, scaled
from .config import VARIANTS

SEQUENTIAL_FIRST = ["autoencoder", "understanding"]
SEQUENTIAL_SECOND = ["generation"]
JOINT_STAGES = ["autoencoder", "generation"]  # run_training turns understanding + generation into "joint"
PROBE_FILE = "probe.json"
TOP_UP_FILE = "top_up.json"


def seeded(train_config: TrainConfig | None, seed: int, joint: bool) -> TrainConfig:
    """The run's config at `seed`. The engine draws each step's noise from its loop's own seed, so a second training
    seed sets the loops' seeds too, or the two runs would share every noise draw."""
    settings = train_config or TrainConfig()
    names = [f.name for f in dataclasses.fields(settings.loops)]
    loops = dataclasses.replace(settings.loops, **{n: dataclasses.replace(getattr(settings.loops, n), seed=seed)
                                                   for n in names})
    return dataclasses.replace(settings, seed=seed, joint=joint, loops=loops)


def final_steps(scale: float, train_config: TrainConfig | None = None) -> int:
    """The optimiser steps of the last stage (generation or joint: both run the generation loop) at `scale`."""
    return scaled((train_config or TrainConfig()).loops.generation, scale).steps


def _train(tag: str, model_config: ModelConfig, out: Path, scale: float, seed: int, log, between=None,
           train_config=None, start=None) -> dict:
    """Train one variant; `between(pipe_dir)` runs after understanding (sequential only). Returns stage minutes.
    `train_config` replaces the default loops (tests); its seeds and joint flag are set here. `start(out)`, when
    given, writes the variant's starting pipeline and marks the stages it replaces done (see `StartFrom`)."""
    from ..training.run import run_training
    from .scorers import training_scorers

    if start is not None:
        start(out)
    joint = VARIANTS[tag][1]
    settings = seeded(train_config, seed, joint)
    # the same prompt checks and instruct probe as `openblip3o train` (their scorers live in evaluation)
    quiet = dict(steps_scale=scale, progress=False, log=log, model_config=model_config, scorers=training_scorers())
    if joint:
        summary = run_training(settings, out, JOINT_STAGES, **quiet)
    else:
        summary = run_training(settings, out, SEQUENTIAL_FIRST, **quiet)
        if between is not None:
            between(out / "pipeline")
        summary |= run_training(settings, out, SEQUENTIAL_SECOND, **quiet)
    return {stage: s["minutes"] for stage, s in summary.items()}


def continue_training(tag: str, model_config: ModelConfig, out: Path, scale: float, seed: int, log,
                      train_config=None) -> dict:
    """Continue the variant's last stage on `out` up to the step count of `scale` (resumed from its latest
    checkpoint); returns {stage: minutes} of the continuation alone."""
    from ..training.run import run_training
    from .scorers import training_scorers

    joint = VARIANTS[tag][1]
    stage = "joint" if joint else "generation"
    (out / stage / DONE).unlink(missing_ok=True)  # a done stage is skipped: the continuation must run it again
    summary = run_training(seeded(train_config, seed, joint), out, SEQUENTIAL_SECOND, steps_scale=scale,
                           progress=False, log=log, model_config=model_config, scorers=training_scorers())
    return {name: s["minutes"] for name, s in summary.items()}


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


def top_up(tag: str, model_config: ModelConfig, work: Path, budget_minutes: float, first_minutes: float,
           probe: dict, scale: float, seed: int, log, train_config=None, tolerance: float = 0.03,
           max_rounds: int = 3) -> dict:
    """Continue a variant that came out short of `budget_minutes` until it is within `tolerance` of it (at most
    `max_rounds` continuations). Each round asks for (missing seconds - expected overhead) / seconds-per-scale more
    scale, at least one step. The first round expects the probe's fitted overhead, which also covers building
    the variant's start and fitting its normalisers, so it tends to land short rather than over (an overshoot
    cannot be undone); later rounds expect the overhead the previous round measured. Cached in
    `work/top_up.json`; returns {"first_minutes", "final_minutes", "steps_scale", "final_steps", "rounds",
    "within_tolerance"}."""
    cache = work / TOP_UP_FILE
    if cache.is_file():
        return json.loads(cache.read_text())
    budget_s, spent_s = budget_minutes * 60, first_minutes * 60
    # seconds of training per unit of scale; the probe's fallback when its slope was lost in timing noise
    rate = probe["seconds_per_scale"]
    if rate <= 0:
        rate = probe["probe_seconds"][1] / (2 * probe["probe_scale"])
    overhead_s = max(0.0, probe["overhead_s"])
    loop_steps = (train_config or TrainConfig()).loops.generation.steps
    steps, rounds = final_steps(scale, train_config), []
    while len(rounds) < max_rounds and budget_s - spent_s > tolerance * budget_s:
        wanted = scale + max(0.0, budget_s - spent_s - overhead_s) / rate
        new_steps = max(steps + 1, final_steps(wanted, train_config))
        new_scale = new_steps / loop_steps  # exactly new_steps once scaled and rounded
        minutes = sum(continue_training(tag, model_config, work, new_scale, seed, log, train_config).values())
        overhead_s = max(0.0, minutes * 60 - (new_scale - scale) * rate)
        rounds.append({"from_steps": steps, "to_steps": new_steps, "minutes": minutes, "overhead_s": overhead_s})
        log(f"{tag}: topped up {steps} -> {new_steps} steps in {minutes:.2f} min")
        spent_s += minutes * 60
        scale, steps = new_scale, new_steps
    result = {"first_minutes": first_minutes, "final_minutes": spent_s / 60, "steps_scale": scale,
              "final_steps": steps, "rounds": rounds,
              "within_tolerance": abs(budget_s - spent_s) <= tolerance * budget_s}
    work.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(result, indent=2) + "\n")
    return result
