"""Where are two-object prompts lost: in the DiT's tokens or in the decoder's pixels? (a spike of ~2 min, 2 cores)

    python bench/two_object_chain.py [MODEL] [--split eval|heldout] [--seeds 2] [--min-tokens 2]

For every `two_object` prompt of the mini GenEval set of a split, at seeds 0..S-1, two chains are scored:
- truth: a scene that satisfies the prompt (placed as `openblip3o data render` places it) -> target encoder -> the
  DiT's target space and back -> decoder;
- generated: the model's own tokens for the prompt -> decoder.
`tokens`: both named shapes hold at least --min-tokens tokens by the per-token shape probe of `eval chain` (fitted on
true tokens of training scenes); `images`: GenEval's rule accepts the decoded image. Generated tokens as good as true
ones by the probe, with images far worse, put the loss in the decoder's reading of generated tokens (or in what a
linear probe cannot see: the outline). `eval chain` does the same for single objects.

Measured 2026-12-04 on the shipped mini model, `eval` split, 2 seeds (198 chains): truth tokens 119, images 134;
generated tokens 128, images 42.
"""

import argparse
import json

import torch

from openblip3o.data.shapes import SHAPES, WorldConfig
from openblip3o.data.shapes.prompts import evaluation_set
from openblip3o.data.shapes.render import render_scene
from openblip3o.data.shapes.sampler import realise
from openblip3o.evaluation.chain import token_probes
from openblip3o.evaluation.geneval.groundtruth import sample_rng
from openblip3o.evaluation.geneval.score import score_image
from openblip3o.inference.pipeline import BLIP3oPipeline
from openblip3o.models.encoders import to_tensor
from openblip3o.utils.images import to_pil

BATCH = 33


def shapes_in(target_tokens: torch.Tensor, probe, min_tokens: int) -> set[str]:
    """(N, D) tokens in the DiT's target space -> the shapes the probe gives at least `min_tokens` tokens."""
    classes = probe(target_tokens)
    counts = torch.bincount(classes, minlength=len(SHAPES) + 1)
    return {SHAPES[k - 1] for k in range(1, len(SHAPES) + 1) if counts[k] >= min_tokens}


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", default="mini")
    parser.add_argument("--split", choices=("eval", "heldout"), default="eval")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--min-tokens", type=int, default=2)
    args = parser.parse_args()
    model = BLIP3oPipeline.from_pretrained(args.model).model.eval()
    encoder, world = model.target_encoder, WorldConfig()
    records = [r for r in evaluation_set(args.split) if r["tag"] == "two_object"]
    probe = token_probes(encoder)["shape"]
    counts = dict.fromkeys(("truth_tokens", "truth_images", "generated_tokens", "generated_images"), 0)
    for seed in range(args.seeds):
        for first in range(0, len(records), BATCH):
            chunk = records[first:first + BATCH]
            renders = [render_scene(realise(r, sample_rng(seed, first + i, 0), world), world)
                       for i, r in enumerate(chunk)]
            truth = encoder.denormalize(encoder.normalize(encoder.encode(to_tensor(renders, world.image_size))))
            noise = [torch.Generator().manual_seed(1000 * seed + first + i) for i in range(len(chunk))]
            generated = model.sample_tokens([r["prompt"] for r in chunk], generator=noise)
            for name, tokens in (("truth", truth), ("generated", generated)):
                decoder_noise = [torch.Generator().manual_seed(i) for i in range(len(chunk))]
                images = to_pil(model.decode(tokens, generator=decoder_noise))
                target = encoder.normalize(tokens)
                for rec, row, image in zip(chunk, target, images):
                    wanted = {clause["class"] for clause in rec["include"]}
                    counts[f"{name}_tokens"] += wanted <= shapes_in(row, probe, args.min_tokens)
                    counts[f"{name}_images"] += bool(score_image(rec, image)[0])
    print(json.dumps(counts | {"chains": len(records) * args.seeds}))


if __name__ == "__main__":
    main()
