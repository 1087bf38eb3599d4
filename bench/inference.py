"""Batched vs one-at-a-time inference on the mini preset: images/s and answers/s, with the ratio.

    python bench/inference.py [--model DIR] [--images 16] [--steps 30] [--decoder-steps 50] [--threads 2]

Random weights cost the same as trained ones; pass --model to time a saved pipeline.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from openblip3o import BLIP3oPipeline
from openblip3o.data.shapes import ShapesWorld


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="saved pipeline folder (default: the mini preset, random weights)")
    parser.add_argument("--images", type=int, default=16, help="images (and questions) per measurement")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--decoder-steps", type=int, default=50)
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pipe = BLIP3oPipeline.from_pretrained(args.model) if args.model else BLIP3oPipeline.from_preset("mini")
    world = ShapesWorld("eval", seed=0)
    examples = [world[i] for i in range(args.images)]
    prompts = [e.annotation["prompt"] for e in examples]
    images = [e.image for e in examples]
    questions = [e.annotation["vqa"][0]["question"] for e in examples]
    settings = dict(num_inference_steps=args.steps, guidance_scale=args.guidance, decoder_num_inference_steps=args.decoder_steps,
                    decoder_guidance_scale=args.guidance, progress=False)

    def seeds(indices):
        return [torch.Generator().manual_seed(i) for i in indices]

    pipe(prompts[:2], generator=seeds(range(2)), **settings)  # warm-up
    loop = timed(lambda: [pipe(p, generator=seeds([i]), **settings) for i, p in enumerate(prompts)])
    batched = timed(lambda: pipe(prompts, generator=seeds(range(len(prompts))), **settings))
    answer_loop = timed(lambda: [pipe.answer([im], [q]) for im, q in zip(images, questions)])
    answer_batched = timed(lambda: pipe.answer(images, questions))
    n = len(prompts)
    print(f"openblip3o inference benchmark: {pipe.config.name} preset, {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"generation: {args.steps} DiT steps + {args.decoder_steps} decoder steps, CFG {args.guidance} on both, "
          f"{n} images at {pipe.config.decoder.image_size} px")
    print(f"{'task':<12} {'mode':<18} {'seconds':>9} {'per second':>11} {'speed-up':>9}")
    print(f"{'generate':<12} {'loop of batch 1':<18} {loop:>9.2f} {n / loop:>11.2f} {'1.00x':>9}")
    print(f"{'generate':<12} {f'batch of {n}':<18} {batched:>9.2f} {n / batched:>11.2f} {loop / batched:>8.2f}x")
    print(f"{'answer':<12} {'loop of batch 1':<18} {answer_loop:>9.2f} {n / answer_loop:>11.2f} {'1.00x':>9}")
    print(f"{'answer':<12} {f'batch of {n}':<18} {answer_batched:>9.2f} {n / answer_batched:>11.2f} "
          f"{answer_loop / answer_batched:>8.2f}x")


if __name__ == "__main__":
    main()
