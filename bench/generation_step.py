"""Where one generation training step's time goes, part by part, on a trained pipeline as its recipe trains it.

    python bench/generation_step.py [--model mini] [--batch-size 32] [--repeats 3] [--train-queries]

Parts: data (render + captions), target encoding (frozen encoder), the backbone's condition pass (frozen; with
`--train-queries` it keeps a graph to the queries), and the DiT's forward + backward on that condition.
"""

from __future__ import annotations

import argparse
import time

import torch

from openblip3o.cli.loading import load_for_command
from openblip3o.models.unified import tokens_to_grid
from openblip3o.training.stages.generation import GenerationTask


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mini")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--train-queries", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = load_for_command(args.model).pipe.model.float().train()
    task = GenerationTask(model, train_queries=args.train_queries)
    images, captions = task.batch(0, args.batch_size)
    encoder = model.target_encoder

    def targets():
        with torch.no_grad():
            return tokens_to_grid(encoder.normalize(encoder.encode(images)), model.grid_size)

    grid = targets()
    with torch.no_grad():
        cond, mask = model.backbone.condition(captions)

    def dit():
        model.objective.loss(model.generator, grid, cond, mask, None).backward()

    def whole():
        task.loss(task.batch(0, args.batch_size), None)[0].backward()

    parts = {"data": lambda: task.batch(0, args.batch_size), "target encoding": targets,
             "condition (backbone)": lambda: model.backbone.condition(captions), "DiT forward + backward": dit,
             "whole step (loss + backward)": whole}
    print(f"generation step, batch {args.batch_size}, {torch.get_num_threads()} threads, condition {tuple(cond.shape)}")
    for name, fn in parts.items():
        print(f"{name:<30} {timed(fn, args.repeats):7.3f} s")


if __name__ == "__main__":
    main()
