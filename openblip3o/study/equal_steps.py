"""Equal steps beside equal time (the paper's framing), from the checkpoints of the same runs.

At an equal wall-clock the variants train different step counts (the joint one's steps cost more). With
`equal_steps_too`, the planned step counts are known once every variant is probed; each run then checkpoints its
last stage (generation, or joint) every `common` steps, `common` being the smallest planned count, and keeps all of
those checkpoints, so that every run has one at that step. After training, `pick_checkpoints` takes the smallest
final step over the rows when every row has a checkpoint there (no top-up moved the shortest run), else the largest
step every row has one at: all rows are measured at exactly one step, which the report states.

What is measured there is the run's model after that many steps, with the EMA weights the stage would have saved,
not a run trained for that many steps alone: a longer run's learning rate has not yet annealed at that step.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from safetensors.torch import load_file

from ..training.checkpoint import PREFIX
from ..training.config import TrainConfig
from ..training.engine import CHECKPOINTS
from ..training.run import PIPELINE
from .budget import seeded

KEEP_ALL = 1_000_000  # keep every checkpoint: with checkpoint_every = the smallest planned count there are a few


def checkpoint_plan(train_config: TrainConfig | None, planned_steps: list[int]) -> TrainConfig:
    """The study's training config with the last stage's loop checkpointing at the smallest planned step count."""
    settings = train_config or TrainConfig()
    loop = dataclasses.replace(settings.loops.generation, checkpoint_every=min(planned_steps),
                               keep_checkpoints=KEEP_ALL)
    return dataclasses.replace(settings, loops=dataclasses.replace(settings.loops, generation=loop))


def checkpoints(stage_dir: Path) -> dict[int, Path]:
    """{step: folder} of a stage's complete checkpoints."""
    root = Path(stage_dir) / CHECKPOINTS
    found = {}
    for path in root.glob(f"{PREFIX}*") if root.is_dir() else ():
        if (path / "state.json").is_file() and path.name[len(PREFIX):].isdigit():
            found[int(path.name[len(PREFIX):])] = path
    return found


def pick_checkpoints(available: dict[str, dict[int, Path]]) -> tuple[int, dict[str, Path]] | None:
    """One step for every row and each row's checkpoint at it: the smallest final step over the rows when every
    row has a checkpoint there, else the largest step below it that every row has. None when there is none."""
    if not available or not all(available.values()):
        return None
    target = min(max(steps) for steps in available.values())
    shared = set.intersection(*(set(steps) for steps in available.values()))
    eligible = [step for step in shared if step <= target]
    if not eligible:
        return None
    step = max(eligible)
    return step, {key: steps[step] for key, steps in available.items()}


def pipeline_at(work: Path, stage: str, checkpoint: Path, seed: int, train_config: TrainConfig | None = None,
                log=print):
    """The run's saved pipeline with its last stage's trained modules as they were at `checkpoint` (EMA weights
    where the loop keeps an EMA, as the stage saves them). The other parts did not train in that stage, so they
    are the same at every step."""
    from ..inference.pipeline import BLIP3oPipeline
    from ..training.registry import STAGES, StageContext

    pipe = BLIP3oPipeline.from_pretrained(work / PIPELINE)
    task = STAGES[stage].make(StageContext(pipe, seeded(train_config, seed, stage == "joint"), None, log))
    # the engine names parameters by their path under its task wrapper ("trained.<module>..."), EMA ones included
    holder = torch.nn.Module()
    holder.trained = torch.nn.ModuleDict(task.modules())
    holder.trained.load_state_dict(load_file(str(checkpoint / "modules.safetensors")), strict=True)
    ema_file = checkpoint / "ema.safetensors"
    if ema_file.is_file():
        shadow = load_file(str(ema_file))
        with torch.no_grad():
            for name, param in holder.named_parameters():
                if param.requires_grad and name in shadow:
                    param.copy_(shadow[name])
    pipe.model.eval()
    return pipe


def measure_equal_steps(cfg, out: Path, rows: list, records: list[dict], variants: dict, previous: dict | None,
                        train_config: TrainConfig | None, log) -> dict | None:
    """{"step", "variants": {key: measures}} for the rows of `variants`, each at the common step; rows already in
    `previous` at the same step are read back. None (and a log line) when the runs share no checkpoint step."""
    from .measures import measure_pipeline

    rows = [row for row in rows if row.key in variants]
    available = {row.key: checkpoints(out / "variants" / row.key / row.final_stage) for row in rows}
    picked = pick_checkpoints(available)
    if picked is None:
        log("equal steps: the runs share no checkpoint step (were they trained with --equal-steps-too?)")
        return None
    step, chosen = picked
    done = previous["variants"] if previous and previous.get("step") == step else {}
    measured = {}
    for row in rows:
        if row.key in done:
            measured[row.key] = done[row.key]
            continue
        work = out / "variants" / row.key
        pipe = pipeline_at(work, row.final_stage, chosen[row.key], row.seed, train_config, log)
        folder = work / f"geneval-step{step}"
        measured[row.key] = {**measure_pipeline(pipe, records, folder, cfg), "step": step,
                             "final_steps": max(available[row.key]),
                             "vqa_after_understanding": variants[row.key].get("vqa_after_understanding"),
                             "images_dir": str(folder.relative_to(out))}
        log(f"{row.key} at step {step}: GenEval {measured[row.key]['geneval']['overall']:.3f}")
    return {"step": step, "variants": measured}
