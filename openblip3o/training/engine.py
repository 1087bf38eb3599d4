"""The training loop every stage uses, on `accelerate`: one process on a CPU, many with `accelerate launch`.

A stage is a `Task`: the modules it trains, `batch(start, size)` (examples [start, start + size) — a pure
function of the position, so a resumed run sees exactly the data it would have seen), and `loss(batch,
generator)`. A task that reads sequentially (shards) may add `data_state()` / `load_data_state(state)`: saved with
each checkpoint, it lets a resumed run reach its position without reading everything before it. Randomness inside a step comes from a generator seeded by (seed, step, micro-batch, rank), so
resuming from a checkpoint reproduces the uninterrupted run's losses exactly.
"""

from __future__ import annotations

import json
import math
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Protocol

import torch
from accelerate import Accelerator
from diffusers.training_utils import EMAModel
from torch import nn
from tqdm.auto import tqdm
from transformers import get_cosine_with_min_lr_schedule_with_warmup

from .checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint, set_rng_state
from .config import LoopConfig

LOG_FILE = "log.jsonl"
CHECKPOINTS = "checkpoints"
SEED_STRIDE = 1_000_003  # spreads (seed, step, micro-batch, rank) over distinct generator seeds


class TrainingAborted(RuntimeError):
    """Too many consecutive non-finite losses: the run stops rather than wasting the budget."""


class Task(Protocol):
    name: str

    def modules(self) -> dict[str, nn.Module]: ...

    def batch(self, start: int, size: int) -> Any: ...

    def loss(self, batch: Any, generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]: ...


class _TaskModule(nn.Module):
    """The task's trainable modules under one root, so accelerate (DDP/FSDP) wraps them as one model."""

    def __init__(self, task: Task):
        super().__init__()
        self.trained = nn.ModuleDict(task.modules())
        self._task = [task]  # a list: not registered as a submodule

    def forward(self, batch, generator):
        return self._task[0].loss(batch, generator)


def _mixed_precision(setting: str) -> str:
    if setting == "auto":
        return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    return setting


def _step_generator(seed: int, step: int, micro: int, rank: int, device) -> torch.Generator:
    value = ((seed * SEED_STRIDE + step) * SEED_STRIDE + micro) * SEED_STRIDE + rank
    return torch.Generator(device=device).manual_seed(value % (2**63))


def _truncate_log(path: Path, last_step: int) -> None:
    """Drop log rows past the checkpoint a run resumes from: they will be made again, identically."""
    if path.is_file():
        rows = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        kept = [line for line in rows if json.loads(line).get("step", 0) <= last_step]
        path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")


def train(task: Task, loop: LoopConfig, out_dir: str | Path, resume: bool = True, progress: bool = True,
          sample_fn=None) -> dict:
    """Run `loop.steps` optimiser steps of `task`; return a summary. Resumes from `out_dir` when it can."""
    out_dir = Path(out_dir)
    # cpu=True lets torchrun on a CPU machine form a gloo process group (accelerate otherwise stays single).
    accelerator = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=_mixed_precision(loop.mixed_precision),
                              log_with=None if loop.log_with == "none" else loop.log_with, project_dir=str(out_dir))
    world, rank = accelerator.num_processes, accelerator.process_index
    per_micro = loop.batch_size // loop.grad_accum
    if loop.batch_size % (loop.grad_accum * world):
        raise ValueError(f"batch_size {loop.batch_size} must divide into grad_accum {loop.grad_accum} x {world} processes")
    local = per_micro // world

    module = _TaskModule(task)
    params = [p for p in module.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"stage {task.name!r} has nothing to train")
    optimizer = torch.optim.AdamW(params, lr=loop.lr, betas=loop.betas, weight_decay=loop.weight_decay)
    # Stepped by hand once per optimiser step: accelerate's wrapper would step it once per process.
    scheduler = get_cosine_with_min_lr_schedule_with_warmup(optimizer, loop.warmup_steps, loop.steps,
                                                            min_lr_rate=loop.min_lr_ratio)
    ema = EMAModel(params, decay=loop.ema_decay) if loop.ema_decay > 0 else None
    module, optimizer = accelerator.prepare(module, optimizer)
    plain = accelerator.unwrap_model(module)
    names = [n for n, p in plain.named_parameters() if p.requires_grad]

    start, bad_steps = 0, 0
    log_path = out_dir / LOG_FILE
    checkpoint = latest_checkpoint(out_dir / CHECKPOINTS) if resume else None
    if checkpoint is not None:
        saved = load_checkpoint(checkpoint)
        plain.trained.load_state_dict(saved["modules"], strict=True)
        optimizer.optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["state"]["scheduler"])
        if ema is not None and saved["ema"] is not None:
            for name, shadow in zip(names, ema.shadow_params):
                shadow.copy_(saved["ema"][name])
            ema.optimization_step = saved["state"]["ema_step"]
        set_rng_state(saved["rng"])
        start, bad_steps = saved["state"]["step"], saved["state"]["bad_steps"]
        if saved["state"].get("data") is not None and hasattr(task, "load_data_state"):
            task.load_data_state(saved["state"]["data"])
        if accelerator.is_main_process:
            _truncate_log(log_path, start)
    if accelerator.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
    if loop.log_with != "none":
        accelerator.init_trackers(task.name)

    bar = tqdm(total=loop.steps, initial=start, desc=task.name, disable=not (progress and accelerator.is_main_process),
               dynamic_ncols=True)
    began, data_seconds, last_loss = time.perf_counter(), 0.0, float("nan")
    for step in range(start, loop.steps):
        step_began = time.perf_counter()
        total_loss, metrics = 0.0, {}
        for micro in range(loop.grad_accum):
            t0 = time.perf_counter()
            batch = task.batch(step * loop.batch_size + micro * per_micro + rank * local, local)
            data_seconds += time.perf_counter() - t0
            generator = _step_generator(loop.seed, step, micro, rank, "cpu")
            sync = micro == loop.grad_accum - 1
            with accelerator.no_sync(module) if not sync else nullcontext():
                with accelerator.autocast():
                    loss, parts = module(batch, generator)
                accelerator.backward(loss / loop.grad_accum)
            total_loss += loss.detach().float().item() / loop.grad_accum
            for key, value in parts.items():
                metrics[key] = metrics.get(key, 0.0) + value / loop.grad_accum
        finite = torch.tensor(float(math.isfinite(total_loss)), device=accelerator.device)
        grad_norm = accelerator.clip_grad_norm_(params, loop.grad_clip) if loop.grad_clip > 0 else torch.tensor(0.0)
        finite = finite * torch.isfinite(torch.as_tensor(grad_norm)).float().to(finite.device)
        if accelerator.reduce(finite, reduction="sum").item() < world:
            optimizer.zero_grad(set_to_none=True)
            bad_steps += 1
            accelerator.print(f"step {step}: non-finite loss or gradient ({total_loss}); step skipped ({bad_steps} in a row)")
            if bad_steps >= loop.max_bad_steps:
                raise TrainingAborted(f"{task.name}: {bad_steps} non-finite steps in a row at step {step}")
        else:
            bad_steps = 0
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if ema is not None:
                ema.step(params)
        scheduler.step()
        last_loss = accelerator.reduce(torch.tensor(total_loss, device=accelerator.device), reduction="mean").item()
        done = step + 1
        elapsed = time.perf_counter() - began
        if accelerator.is_main_process:
            rate = (done - start) / elapsed
            bar.set_postfix(loss=f"{last_loss:.4f}", steps_s=f"{rate:.2f}", samples_s=f"{rate * loop.batch_size:.0f}")
            bar.update(1)
            if done % loop.log_every == 0 or done == loop.steps:
                row = {"step": done, "loss": last_loss, "lr": scheduler.get_last_lr()[0], "grad_norm": float(grad_norm),
                       "steps_per_s": rate, "samples_per_s": rate * loop.batch_size, "data_share": data_seconds / elapsed,
                       "step_seconds": time.perf_counter() - step_began, **metrics}
                with log_path.open("a", encoding="utf-8") as handle:
                    handle.write(json.dumps(row) + "\n")
                if loop.log_with != "none":
                    accelerator.log({k: v for k, v in row.items() if k != "step"}, step=done)
            if sample_fn is not None and loop.sample_every and done % loop.sample_every == 0:
                sample_fn(done, out_dir)
        if done % loop.checkpoint_every == 0 or done == loop.steps:
            accelerator.wait_for_everyone()
            if accelerator.is_main_process:
                state = {"step": done, "bad_steps": bad_steps, "scheduler": scheduler.state_dict(),
                         "ema_step": ema.optimization_step if ema is not None else 0, "task": task.name,
                         "data": task.data_state() if hasattr(task, "data_state") else None}
                shadow = dict(zip(names, ema.shadow_params)) if ema is not None else None
                save_checkpoint(out_dir / CHECKPOINTS, done, plain.trained.state_dict(), optimizer.optimizer.state_dict(),
                                state, shadow, keep=loop.keep_checkpoints)
            accelerator.wait_for_everyone()
    bar.close()
    if ema is not None:
        ema.copy_to(params)  # the stage saves the EMA weights
    if loop.log_with != "none":
        accelerator.end_training()
    seconds = time.perf_counter() - began
    ran = loop.steps - start
    return {"task": task.name, "steps": loop.steps, "resumed_from": start, "final_loss": last_loss, "seconds": seconds,
            "samples_per_s": ran * loop.batch_size / seconds if ran else 0.0,
            "data_share": data_seconds / seconds if ran else 0.0}
