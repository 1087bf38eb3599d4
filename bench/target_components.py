"""How many principal components of the target features does the decoder need? (`target.principal_components`)

    python bench/target_components.py [--model DIR] [--num 200] K [K ...]

Fits the components on the standardised target features of 2,000 training scenes, prints the share of variance the
first 4 / 8 / 16 / 32 / 64 keep, then, for each K, reconstructs `--num` held-out scenes from the features projected
onto K components (lifted back before the decoder) and scores them by rule, as `openblip3o eval reconstruct` does.
K = the token width is the plain autoencoder. Measured 2026-12-03 on the shipped autoencoder (192 channels):
variance kept 0.71 / 0.88 / 0.96 / 0.98 / 0.99; fully correct 0.815 (192), 0.795 (32), 0.71 (16), 0.525 (8).
"""

from __future__ import annotations

import argparse
import time

import torch

from openblip3o.data.shapes import ShapesWorld
from openblip3o.evaluation.reconstruct import reconstruct_heldout
from openblip3o.inference.pipeline import BLIP3oPipeline
from openblip3o.models.encoders import to_tensor
from openblip3o.models.principal import PrincipalComponents

FIT_SCENES, FIT_BATCH = 2000, 200
REPORTED = (4, 8, 16, 32, 64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("components", type=int, nargs="+")
    parser.add_argument("--model", default="mini")
    parser.add_argument("--num", type=int, default=200)
    args = parser.parse_args()
    torch.set_num_threads(2)
    model = BLIP3oPipeline.from_pretrained(args.model).model.float().eval()
    encoder = model.target_encoder
    world = ShapesWorld("train", 0)
    with torch.no_grad():
        tokens = torch.cat([encoder.standardize(encoder.encode(to_tensor(
            [world[i].image for i in range(start, start + FIT_BATCH)], encoder.image_size)))
            for start in range(0, FIT_SCENES, FIT_BATCH)])
    full = PrincipalComponents(encoder.token_dim, encoder.token_dim)
    full.fit(tokens)
    energy = (tokens.reshape(-1, encoder.token_dim) - full.mean) @ full.basis.T
    share = energy.pow(2).mean(0).cumsum(0) / energy.pow(2).mean(0).sum()
    print("variance kept by the first", ", ".join(f"{k}: {share[k - 1]:.3f}" for k in REPORTED if k <= len(share)))
    for k in args.components:
        pca = PrincipalComponents(encoder.token_dim, k)
        pca.fit(tokens)

        def reconstruct(images, num_inference_steps, guidance_scale, generator, pca=pca):
            lifted = encoder.destandardize(pca.lift(pca.project(encoder.standardize(encoder.encode(images)))))
            return model.decode(lifted, None, generator, num_inference_steps, guidance_scale)

        began = time.perf_counter()
        scores = reconstruct_heldout(reconstruct, num=args.num)
        print(f"K={k}: " + ", ".join(f"{key} {value:.3f}" for key, value in scores.items() if key != "scenes")
              + f" ({scores['scenes']} scenes, {time.perf_counter() - began:.0f} s)")


if __name__ == "__main__":
    main()
