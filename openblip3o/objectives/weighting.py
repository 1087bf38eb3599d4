"""Per-position loss weights, shared by the objectives.

A weight map (B, 1, H, W) scales each grid position's squared error; the loss is normalised by the weights' total so
that a map of ones gives exactly the plain mean squared error and the loss scale does not grow with the weights.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _checked(weights: torch.Tensor, prediction: torch.Tensor) -> torch.Tensor:
    """weights as fp32, refused unless (B, 1, H, W) for a (B, C, H, W) prediction."""
    if weights.dim() != 4 or weights.shape[1] != 1 or weights.shape[0] != prediction.shape[0] \
            or weights.shape[2:] != prediction.shape[2:]:
        raise ValueError(f"loss weights must be (B, 1, H, W) = ({prediction.shape[0]}, 1, "
                         f"{prediction.shape[2]}, {prediction.shape[3]}), got {tuple(weights.shape)}")
    return weights.float()


def per_sample_mse(prediction: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """(B, C, H, W) pairs -> (B,) each sample's (weighted) mean squared error, normalised as `weighted_mse`."""
    squared = (prediction.float() - target.float()).pow(2)
    if weights is None:
        return squared.flatten(1).mean(1)
    weights = _checked(weights, prediction)
    total = (weights.flatten(1).sum(1) * prediction.shape[1]).clamp_min(torch.finfo(torch.float32).tiny)
    return (squared * weights).flatten(1).sum(1) / total


def weighted_mse(prediction: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """prediction, target: (B, C, H, W); weights: (B, 1, H, W), non-negative, or None (plain MSE) -> scalar (fp32)."""
    prediction, target = prediction.float(), target.float()
    if weights is None:
        return F.mse_loss(prediction, target)
    weights = _checked(weights, prediction)
    squared = (prediction - target).pow(2) * weights
    return squared.sum() / (weights.sum() * prediction.shape[1]).clamp_min(torch.finfo(torch.float32).tiny)
