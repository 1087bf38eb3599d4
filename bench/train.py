"""Training throughput of every stage on this machine: samples/s and the share of step time spent on data.

    python bench/train.py [--steps 6] [--batch-size 32] [--threads 2]

Mini preset, random weights (a step costs the same trained or not); each stage runs through the real engine.
"""

from __future__ import annotations

import argparse
import platform
import tempfile

import torch

from openblip3o.inference.pipeline import BLIP3oPipeline
from openblip3o.training.config import LoopConfig
from openblip3o.training.engine import train
from openblip3o.training.stages.autoencoder import autoencoder_tasks
from openblip3o.training.stages.generation import GenerationTask
from openblip3o.training.stages.instruct import InstructTask
from openblip3o.training.stages.understanding import UnderstandingTask


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6, help="timed steps per stage (after one warm-up step)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = BLIP3oPipeline.from_preset("mini").model.to(device).train()
    tasks = [(f"autoencoder/{name}", make) for name, make in autoencoder_tasks(model).items()]
    tasks += [("understanding", lambda: UnderstandingTask(model)), ("generation", lambda: GenerationTask(model)),
              ("instruct", lambda: InstructTask(model))]
    device_name = torch.cuda.get_device_name() if device == "cuda" else f"{platform.machine()} CPU, {args.threads} threads"
    print(f"openblip3o training benchmark: mini preset, batch {args.batch_size}, {device_name}, torch {torch.__version__}")
    print(f"{'stage':<22} {'s/step':>8} {'samples/s':>10} {'data share':>11}")
    for name, make in tasks:
        task = make()
        with tempfile.TemporaryDirectory() as out:
            loop = LoopConfig(steps=1, batch_size=args.batch_size, log_every=10**9, checkpoint_every=10**9)
            train(task, loop, out, resume=False, progress=False)  # warm-up
            loop.steps = args.steps + 1
            result = train(task, loop, out, resume=True, progress=False)
        seconds = result["seconds"] / args.steps
        print(f"{name:<22} {seconds:>8.3f} {args.batch_size / seconds:>10.1f} {result['data_share']:>10.1%}")
        if hasattr(task, "finish"):
            task.finish()


if __name__ == "__main__":
    main()
