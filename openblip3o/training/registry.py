"""The training stages by name: how each is built, which loop it runs, and its optional hooks.

`run_training` knows no stage: for each name it asks `parts(name, model)` for the engine tasks to train in order
(the autoencoder is three: vae, encoder, decoder), and every part is a `Stage`:
    make(ctx) -> Task                              the engine task (its data source built from the config)
    loop                                           the name of its LoopConfig in `TrainConfig.loops`
    sample(task, ctx, step, out_dir)               optional: every `sample_every` steps of the loop
    finish(task, ctx, result, out_dir) -> dict     optional: after the loop; its dict joins the stage's summary
A new stage is one more entry in STAGES (and its name in `run.STAGES` to join the sequential recipe).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..data.sources import build_source
from .checks import Scorers, tag_scores
from .config import TrainConfig
from .engine import Task
from .prompt_check import prompt_check
from .stages.autoencoder import autoencoder_tasks
from .stages.generation import GenerationTask, sample_grid
from .stages.instruct import InstructTask
from .stages.joint import JointTask
from .stages.understanding import UnderstandingTask


@dataclass
class StageContext:
    """What a stage is built from: the pipeline being trained, the run's config, the scorers (None: no checks)."""

    pipe: object  # BLIP3oPipeline
    config: TrainConfig
    scorers: Scorers | None
    log: Callable[[str], None]

    @property
    def model(self):
        return self.pipe.model


@dataclass(frozen=True)
class Stage:
    make: Callable[[StageContext], Task]
    loop: str
    sample: Callable[[Task, StageContext, int, Path], None] | None = None
    finish: Callable[[Task, StageContext, dict, Path], dict] | None = None
    applies: Callable[[object], bool] = lambda model: True  # whether the model has this part at all


def _finish_task(task, ctx: StageContext, result: dict, out_dir: Path) -> dict:
    task.finish()
    return {}


def _check_prompts(task, ctx: StageContext, step: int, out_dir: Path) -> None:
    """Every `sample_every` steps of a generator-training loop: the sample grid and, with scorers, the prompt check."""
    from tqdm.auto import tqdm

    sample_grid(ctx.model, step, out_dir)
    if ctx.scorers is not None:
        prompt_check(ctx.model, step, ctx.scorers, out_dir, log=tqdm.write)  # tqdm.write keeps the bar intact


def _final_prompt_check(task, ctx: StageContext, result: dict, out_dir: Path) -> dict:
    # The final check goes into the summary: a prompt-blind generator is reported, never passed silently.
    if ctx.scorers is None:
        ctx.log("prompt check skipped: no scorers given to run_training")
        return {"prompt_check": None}
    return {"prompt_check": prompt_check(ctx.model, result.get("steps", 0), ctx.scorers, out_dir, log=ctx.log)}


def _make_instruct(ctx: StageContext) -> InstructTask:
    config, scores = ctx.config, None
    if config.instruct_data is None:  # a curated set was weighted when it was made
        if ctx.scorers is None:
            ctx.log("instruct: no scorers given, so no probe: every tag weighted alike")
        else:
            scores = tag_scores(ctx.pipe, config.seed, ctx.scorers)
            ctx.log(f"instruct: probe scores {scores}")
    return InstructTask(ctx.model, config.seed, scores, lora_rank=config.instruct_lora_rank, data=config.instruct_data,
                        train_queries=config.generation_train_queries,
                        foreground_weight=config.generation_foreground_weight)


def _finish_instruct(task: InstructTask, ctx: StageContext, result: dict, out_dir: Path) -> dict:
    task.finish()
    return {"probe_scores": task.scores, "instruct_data": ctx.config.instruct_data, "instruct_items": task.size,
            **_final_prompt_check(task, ctx, result, out_dir)}


def _generation(ctx: StageContext) -> GenerationTask:
    config = ctx.config
    return GenerationTask(ctx.model, config.seed, short_rate=config.short_caption_rate,
                          trainable_layers=config.generation_trainable_layers,
                          train_queries=config.generation_train_queries,
                          source=build_source(config.data.generation, config.seed),
                          foreground_weight=config.generation_foreground_weight,
                          binding_weight=config.generation_binding_weight)


def _joint(ctx: StageContext) -> JointTask:
    config = ctx.config
    return JointTask(ctx.model, config.seed, short_caption_rate=config.short_caption_rate,
                     understanding_source=build_source(config.data.understanding, config.seed),
                     generation_source=build_source(config.data.generation, config.seed))


def _autoencoder_part(name: str) -> Stage:
    """One of `autoencoder_tasks`; a model without a decoder (a VAE-kind target) has the `vae` part alone."""
    def make(ctx: StageContext) -> Task:
        return autoencoder_tasks(ctx.model, ctx.config.seed, ctx.config.data.autoencoder,
                                 label_weight=ctx.config.encoder_label_weight,
                                 condition_noise=ctx.config.decoder_condition_noise,
                                 exact_rate=ctx.config.decoder_exact_rate)[name]()

    return Stage(make, name, finish=_finish_task, applies=lambda model: name in autoencoder_tasks(model))


STAGES: dict[str, Stage] = {
    "vae": _autoencoder_part("vae"),
    "encoder": _autoencoder_part("encoder"),
    "decoder": _autoencoder_part("decoder"),
    "understanding": Stage(lambda ctx: UnderstandingTask(ctx.model, ctx.config.seed, ctx.config.understanding,
                                                         build_source(ctx.config.data.understanding, ctx.config.seed)),
                           "understanding", finish=_finish_task),
    "generation": Stage(_generation, "generation", sample=_check_prompts, finish=_final_prompt_check),
    "joint": Stage(_joint, "generation", sample=_check_prompts, finish=_final_prompt_check),
    "instruct": Stage(_make_instruct, "instruct", finish=_finish_instruct),
}
# Stages trained as several engine tasks, each in its own sub-folder of the stage's.
GROUPS: dict[str, tuple[str, ...]] = {"autoencoder": ("vae", "encoder", "decoder")}


def parts(name: str, model) -> list[str]:
    """The registered parts of stage `name` that `model` has, in training order."""
    return [part for part in GROUPS.get(name, (name,)) if STAGES[part].applies(model)]
