"""`openblip3o train`: the stages in order, each resumable, the pipeline saved after each.

    out/
      <stage>/[<sub-stage>/]log.jsonl, checkpoints/, samples/    per-stage engine output
      <stage>/done.json                                          written when a stage is complete (a rerun skips it)
      pipeline/                                                  the pipeline after the last completed stage
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
                 scorers: Scorers | None = None) -> dict:
    """Train `stages` (default: all four) in order; return a summary per stage.

    The model is the preset's, or `model_config` when given (a design-space variant, a test size). `scorers`
    (evaluation's, passed in by the caller) run the generation stage's prompt checks and the instruct probe.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stages = list(stages or STAGES)
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ValueError(f"unknown stage {unknown[0]!r}; stages: {', '.join(STAGES)}")
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
        if resume and (stage_dir / DONE).is_file():
            summary[stage] = json.loads((stage_dir / DONE).read_text())
            log(f"{stage}: already done, skipped")
            continue
        began = time.perf_counter()
        if not resume:
            shutil.rmtree(stage_dir, ignore_errors=True)
        result = {}
        for part in parts(stage, model):
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
        (stage_dir / DONE).write_text(json.dumps(result, indent=2) + "\n")
        summary[stage] = result
        log(f"{stage}: done in {result['minutes']:.1f} min")
    return summary
