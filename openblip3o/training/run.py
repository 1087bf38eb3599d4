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
from pathlib import Path

import torch

from ..inference.pipeline import BLIP3oPipeline
from ..config import ModelConfig
from .config import LoopConfig, TrainConfig
from .engine import train
from .prompt_check import prompt_check
from .stages.autoencoder import autoencoder_tasks
from .stages.generation import GenerationTask
from .stages.instruct import InstructTask
from .stages.joint import JointTask
from .stages.understanding import UnderstandingTask

STAGES = ("autoencoder", "understanding", "generation", "instruct")
DONE = "done.json"
PIPELINE = "pipeline"
PROBE_PROMPTS_PER_TAG = 8  # the quick evaluation that weights the instruct set
PROBE_STEPS = 10


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


def _probe_scores(pipe: BLIP3oPipeline, seed: int) -> dict[str, float]:
    """Per-tag mini GenEval on a few training-split prompts (cheap settings): where the model is weakest."""
    import random

    from ..data.shapes import PromptSampler
    from ..data.shapes.prompts import TAGS
    from ..evaluation.geneval.detector import detect
    from ..evaluation.geneval.rules import evaluate

    sampler, rng, scores = PromptSampler("train"), random.Random(seed), {}
    pipe.model.eval()
    for tag in TAGS:
        records = [sampler.sample(tag, rng) for _ in range(PROBE_PROMPTS_PER_TAG)]
        images = pipe([r["prompt"] for r in records], generator=[torch.Generator().manual_seed(i) for i in range(len(records))],
                      num_inference_steps=PROBE_STEPS, decoder_num_inference_steps=PROBE_STEPS, progress=False).images
        scores[tag] = sum(evaluate(r, detect(im)[0])[0] for r, im in zip(records, images)) / len(records)
    return scores


def run_training(config: TrainConfig, out_dir: str | Path, stages: list[str] | None = None, resume: bool = True,
                 steps_scale: float = 1.0, progress: bool = True, log=print, model_config: ModelConfig | None = None) -> dict:
    """Train `stages` (default: all four) in order; return a summary per stage.

    The model is the preset's, or `model_config` when given (a design-space variant, a test size).
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
        if stage == "autoencoder":
            result = {}
            for name, make in autoencoder_tasks(model, config.seed).items():
                task = make()
                result[name] = train(task, scaled(getattr(loops, name), steps_scale), stage_dir / name,
                                     resume=resume, progress=progress)
                task.finish()
        elif stage == "understanding":
            task = UnderstandingTask(model, config.seed, config.understanding)
            result = train(task, scaled(loops.understanding, steps_scale), stage_dir, resume=resume, progress=progress)
            task.finish()
        elif stage in ("generation", "joint"):
            task = (JointTask(model, config.seed, short_caption_rate=config.short_caption_rate) if stage == "joint"
                    else GenerationTask(model, config.seed, short_rate=config.short_caption_rate,
                                        trainable_layers=config.generation_trainable_layers,
                                        train_queries=config.generation_train_queries))
            generation = getattr(task, "generation", task)
            result = train(task, scaled(loops.generation, steps_scale), stage_dir, resume=resume, progress=progress,
                           sample_fn=generation.check)
        else:
            scores = None
            if config.instruct_data is None:  # the curated set was weighted when it was made
                scores = _probe_scores(pipe, config.seed)
                log(f"instruct: probe scores {scores}")
            task = InstructTask(model, config.seed, scores, lora_rank=config.instruct_lora_rank,
                                data=config.instruct_data)
            result = train(task, scaled(loops.instruct, steps_scale), stage_dir, resume=resume, progress=progress)
            task.finish()
            result = {**result, "probe_scores": scores, "instruct_data": config.instruct_data,
                      "instruct_items": task.size}
        if stage in ("generation", "joint", "instruct"):
            # The final check goes into the summary: a prompt-blind generator is reported, never passed silently.
            result = {**result, "prompt_check": prompt_check(model, result.get("steps", 0), stage_dir, log=log)}
        model.eval()
        save_pipeline(pipe, out)
        model.train()
        result = {"stage": stage, "minutes": (time.perf_counter() - began) / 60, "result": result}
        (stage_dir / DONE).write_text(json.dumps(result, indent=2) + "\n")
        summary[stage] = result
        log(f"{stage}: done in {result['minutes']:.1f} min")
    return summary
