"""Same-seed colour check: do the 8 colour prompts of the training-time prompt check draw their colour, and their shape?

    python bench/colour_check.py [MODEL] [--seeds 3] [--guidance 3.0 ...] [--out sheet.png]

For each guidance scale, every colour prompt ("a photo of a red circle", ...) is drawn at seeds 0..S-1 (one shared
seed per column, so a prompt-blind model repeats one image per seed) and scored twice: by ShapesWorld's rule (right
shape, colour and count) and by the drawn colour alone (`detector.foreground_colour`). Prints one line per scale and,
with --out, saves the sheet of the first scale (rows = seeds). Measured 2026-12-03 on the shipped mini model, 3 seeds:
24 / 24 by colour, 9 / 24 by rule; 2 seeds at guidance 1 / 2 / 3 / 5: 10 / 7 / 6 / 10 of 16 by rule, 16 / 16 colours.
"""
import argparse

import torch

from openblip3o.data.shapes.rules import evaluate
from openblip3o.evaluation.geneval.detector import detect, foreground_colour
from openblip3o.inference.pipeline import BLIP3oPipeline
from openblip3o.training.prompt_check import colour_records
from openblip3o.utils.images import contact_sheet


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", default="mini")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--guidance", type=float, nargs="+", default=[None])
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    pipe = BLIP3oPipeline.from_pretrained(args.model)
    records = colour_records()
    prompts = [r["prompt"] for r in records]
    for index, guidance in enumerate(args.guidance):
        by_rule = by_colour = 0
        sheet = []
        for seed in range(args.seeds):
            generators = [torch.Generator().manual_seed(seed) for _ in records]
            images = pipe(prompts, generator=generators, guidance_scale=guidance, progress=False).images
            sheet += images
            for record, image in zip(records, images):
                by_rule += evaluate(record, detect(image)[0])[0]
                by_colour += foreground_colour(image) == record["include"][0]["color"]
        total = args.seeds * len(records)
        label = "default" if guidance is None else guidance
        print(f"guidance {label}: drawn colour {by_colour}/{total}, rule {by_rule}/{total}", flush=True)
        if args.out and index == 0:
            contact_sheet(sheet, prompts * args.seeds, columns=len(records), tile=96).save(args.out)


if __name__ == "__main__":
    main()
