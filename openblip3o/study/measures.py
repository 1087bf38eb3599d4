"""What the study measures on a variant's images beside GenEval: diversity (per prompt, so that it has a standard
error) and the Frechet distance to ground truth in the mini CLIP feature space."""

from __future__ import annotations

from itertools import combinations
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..evaluation.geneval.layout import sample_path

FD_EPS = 1e-6


def load_samples(root: Path, n_prompts: int, n_samples: int) -> list[list[np.ndarray]]:
    """Images of a GenEval layout as float arrays in [0, 1], grouped by prompt."""
    return [[np.asarray(Image.open(sample_path(root, i, j)).convert("RGB"), dtype=np.float32) / 255.0
             for j in range(n_samples)] for i in range(n_prompts)]


def diversity_per_prompt(groups: list[list[np.ndarray]]) -> list[float]:
    """Per prompt: the mean pairwise absolute pixel difference among its samples (0-1)."""
    return [float(np.mean([np.abs(a - b).mean() for a, b in combinations(group, 2)])) for group in groups]


def diversity(groups: list[list[np.ndarray]]) -> float:
    """Mean over prompts of `diversity_per_prompt`."""
    return float(np.mean(diversity_per_prompt(groups)))


@torch.no_grad()
def clip_features(encoder, groups: list[list[np.ndarray]], batch_size: int = 64) -> np.ndarray:
    """(N, D): the target encoder's tokens of every image, mean-pooled."""
    flat = [image for group in groups for image in group]
    features = []
    for first in range(0, len(flat), batch_size):
        batch = torch.from_numpy(np.stack(flat[first : first + batch_size])).permute(0, 3, 1, 2).contiguous()
        features.append(encoder.encode(batch).mean(dim=1).double().numpy())
    return np.concatenate(features)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^1/2), with a small ridge where the product is singular."""
    from scipy import linalg

    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    root = linalg.sqrtm(cov_a @ cov_b)
    if not np.isfinite(root).all():
        ridge = np.eye(cov_a.shape[0]) * FD_EPS
        root = linalg.sqrtm((cov_a + ridge) @ (cov_b + ridge))
    root = np.real(root)
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(root))


def measure_pipeline(pipe, records: list[dict], folder: Path, cfg) -> dict:
    """Everything measured on one trained model: mini GenEval on `records` (images written to `folder`), diversity
    per prompt and its mean, and held-out VQA accuracy with its number of questions (for the binomial SE)."""
    from ..config import SamplingSettings
    from ..evaluation.geneval.generate import generate_layout
    from ..evaluation.geneval.score import score_folder
    from ..evaluation.vqa import vqa_heldout

    vqa = vqa_heldout(pipe, num=cfg.vqa_scenes, seed=cfg.seed)
    sampling = SamplingSettings(num_inference_steps=cfg.num_inference_steps,
                                decoder_num_inference_steps=cfg.decoder_num_inference_steps)
    generate_layout(pipe, records, folder, n_samples=cfg.n_samples, batch_size=cfg.batch_size, seed=cfg.seed,
                    sampling=sampling, grid=False, progress=False)
    per_prompt = diversity_per_prompt(load_samples(folder, len(records), cfg.n_samples))
    return {"geneval": score_folder(folder, progress=False), "diversity": float(np.mean(per_prompt)),
            "diversity_per_prompt": per_prompt, "vqa_final": vqa["accuracy"], "vqa_questions": vqa["questions"]}
