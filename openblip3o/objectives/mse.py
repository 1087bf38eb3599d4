"""MSE regression: the network maps the condition to the target in one step (Emu2 / MetaMorph style).

The same network as flow matching is used, fed a fixed zero input at timestep 0, so the design-space
comparison changes the objective only.
"""

from __future__ import annotations

import torch

from ..config import ObjectiveConfig
from .flow_matching import Network
from .weighting import weighted_mse


class MSERegression:
    def __init__(self, config: ObjectiveConfig | None = None):
        self.config = config or ObjectiveConfig(name="mse")

    def _predict(self, network: Network, shape, cond, cond_mask, dtype) -> torch.Tensor:
        x = torch.zeros(shape, device=cond.device, dtype=dtype)
        timestep = torch.zeros(shape[0], device=cond.device)
        return network(x, timestep, cond, cond_mask)

    def loss(self, network: Network, x0: torch.Tensor, cond: torch.Tensor, cond_mask: torch.Tensor | None = None,
             generator: torch.Generator | None = None, weights: torch.Tensor | None = None) -> torch.Tensor:
        """weights: (B, 1, H, W) per-position weights (objectives/weighting.py) or None."""
        return weighted_mse(self._predict(network, x0.shape, cond, cond_mask, x0.dtype), x0, weights)

    @torch.no_grad()
    def sample(self, network: Network, noise: torch.Tensor, cond: torch.Tensor, cond_mask: torch.Tensor | None = None,
               uncond=None, uncond_mask=None, num_inference_steps: int = 1, guidance_scale: float = 1.0,
               progress: bool = False, **flow_options) -> torch.Tensor:
        """One forward pass; the noise only fixes shape and dtype (regression is deterministic). FlowMatching's
        sampler options (`solver`, ...) are accepted and mean nothing here."""
        return self._predict(network, noise.shape, cond, cond_mask, noise.dtype)
