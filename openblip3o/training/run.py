"""`openblip3o train`: the stages in order, each resumable, the pipeline saved after each.

    out/
      <stage>/[<sub-stage>/]log.jsonl, checkpoints/, samples/    per-stage engine output
      <stage>/done.json                                          written when a stage is complete (a rerun skips it)
      pipeline/                                                  the pipeline after the last completed stage

`only_parts` retrains some sub-stages of one stage on the run's saved pipeline, the others kept as they are (e.g.
the decoder alone with a new setting: `--stage autoencoder --parts decoder`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from functools import partial
from pathlib import Path

import torch

from ..config import ModelConfig
from ..inference.pipeline import BLIP3oPipeline
from .checks import Scorers
from .config import LoopConfig, TrainConfig
from .engine import train
from .registry import GROUPS, STAGES as REGISTERED, StageContext, parts

STAGES = ("autoencoder", "understanding", "generation", "instruct")  # the sequential recipe, in order
DONE = "done.json"
PIPELINE = "pipeline"


def scaled(loop: LoopConfig, scale: float) -> LoopConfig:
    """A loop with its step counts scaled (quick runs, budgets); at least one step."""
    steps = max(1, round(loop.steps * scale))
    return dataclasses.replace(loop, steps=steps, warmup_steps=min(loop.warmup_steps, max(1, steps // 10)),
                               checkpoint_every=min(loop.checkpoint_every, steps))


def save_pipeline(pipe: BLIP3oPipeline, out: Path) -> None:
    """`out/pipeline`, written to a temporary folder and renamed, so an interrupted save leaves the old one."""
    tmp = out / f".{PIPELINE}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    pipe.save_pretrained(tmp)
    shutil.rmtree(out / PIPELINE, ignore_errors=True)
    os.replace(tmp, out / PIPELINE)


def run_training(config: TrainConfig, out_dir: str | Path, stages: list[str] | None = None, resume: bool = True,
                 steps_scale: float = 1.0, progress: bool = True, log=print, model_config: ModelConfig | None = None,
                 scorers: Scorers | None = None, only_parts: list[str] | None = None) -> dict:
    """Train `stages` (default: all four) in order; return a summary per stage.

    The model is the preset's, or `model_config` when given (a design-space variant, a test size). `scorers`
    (evaluation's, passed in by the caller) run the generation stage's prompt checks and the instruct probe.
    `only_parts`: with one stage, train only these of its sub-stages on `out/pipeline` (which must exist).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stages = list(stages or STAGES)
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ValueError(f"unknown stage {unknown[0]!r}; stages: {', '.join(STAGES)}")
    if only_parts:
        _check_parts(stages, only_parts, out, resume, config.joint)
        only_parts = [p for p in GROUPS[stages[0]] if p in only_parts]  # in training order
    torch.manual_seed(config.seed)
    if resume and (out / PIPELINE / "model_index.json").is_file():
        pipe = BLIP3oPipeline.from_pretrained(out / PIPELINE)
    else:
        if model_config is None and config.model:
            from ..config import merge
            from ..presets import get_preset

            model_config = merge(get_preset(config.preset), config.model)
        pipe = BLIP3oPipeline.from_preset(config.preset, model_config)
    model = pipe.model.train()
    loops = config.loops
    context = StageContext(pipe, config, scorers, log)
    summary = {}
    if config.joint:  # understanding and generation become one stage with both losses
        stages = [s for s in stages if s not in ("understanding", "generation")]
        at = 1 if "autoencoder" in stages else 0
        stages.insert(at, "joint")
    for stage in stages:
        stage_dir = out / stage
        done = json.loads((stage_dir / DONE).read_text()) if resume and (stage_dir / DONE).is_file() else None
        # a done stage is skipped; with only_parts, only when those parts were what completed it
        if done is not None and (not only_parts or done.get("parts") == only_parts):
            summary[stage] = done
            log(f"{stage}: already done, skipped")
            continue
        began = time.perf_counter()
        if not resume:
            shutil.rmtree(stage_dir, ignore_errors=True)
        result = {}
        for part in [p for p in parts(stage, model) if not only_parts or p in only_parts]:
            if done is not None:  # the stage was completed by another run of its parts: this part starts afresh
                shutil.rmtree(stage_dir / part, ignore_errors=True)
            spec = REGISTERED[part]
            part_dir = stage_dir / part if stage in GROUPS else stage_dir
            task = spec.make(context)
            sample = None if spec.sample is None else partial(spec.sample, task, context)
            trained = train(task, scaled(getattr(loops, spec.loop), steps_scale), part_dir, resume=resume,
                            progress=progress, sample_fn=sample)
            if spec.finish is not None:
                trained = {**trained, **spec.finish(task, context, trained, part_dir)}
            result[part] = trained
        if stage not in GROUPS:
            result = result[stage]
        model.eval()
        save_pipeline(pipe, out)
        model.train()
        result = {"stage": stage, "minutes": (time.perf_counter() - began) / 60, "result": result}
        if only_parts:
            result["parts"] = only_parts
        (stage_dir / DONE).write_text(json.dumps(result, indent=2) + "\n")
        summary[stage] = result
        log(f"{stage}: done in {result['minutes']:.1f} min")
    return summary


def _check_parts(stages: list[str], only_parts: list[str], out: Path, resume: bool, joint: bool) -> None:
    """`only_parts` names sub-stages of exactly one grouped stage, and there is a trained pipeline to keep."""
    if len(stages) != 1 or stages[0] not in GROUPS or joint:
        grouped = ", ".join(f"{name} ({', '.join(group)})" for name, group in GROUPS.items())
        raise ValueError(f"parts apply to one stage that has sub-stages: {grouped}")
    group = GROUPS[stages[0]]
    unknown = [p for p in only_parts if p not in group]
    if unknown:
        raise ValueError(f"unknown part {unknown[0]!r} of stage {stages[0]!r}; its parts: {', '.join(group)}")
    if not resume or not (out / PIPELINE / "model_index.json").is_file():
        raise ValueError(f"retraining parts keeps the others of a trained pipeline: {out / PIPELINE} is missing "
                         "(or --no-resume was given)")
