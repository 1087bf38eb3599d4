"""The generator's view of the target features: their top principal components (an optional, fixed linear map).

CLIP features are highly redundant channel to channel: at mini scale (192 channels, standardised), 16 principal
components hold 96 % of the variance and 32 hold 98 %. The DiT then spends its capacity modelling near-copies of the
same signal. With `TargetConfig.principal_components = K` the generator samples K numbers per token; they are lifted
back to the full D-channel features (mean + components) before the decoder, which is unchanged. The map is fitted
once, by SVD, on standardised features of training images, and saved with the target encoder.
"""

from __future__ import annotations

import torch
from torch import nn


class PrincipalComponents(nn.Module):
    """A fixed projection D -> K (K <= D) and its lift K -> D, scaled so the K coordinates have unit mean square.

    Buffers: basis (K, D) orthonormal rows, mean (D,), scale (), fitted () bool.
    """

    def __init__(self, dim: int, components: int):
        super().__init__()
        if not 0 < components <= dim:
            raise ValueError(f"principal_components must be in 1..{dim} (the token width), got {components}")
        self.dim, self.components = dim, components
        # Until fitted, the first K channels (an orthonormal basis too), so an untrained model still runs end to end.
        self.register_buffer("basis", torch.eye(components, dim))
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("scale", torch.ones(()))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def fit(self, tokens: torch.Tensor) -> float:
        """Fit on standardised tokens (B, N, D); return the share of variance the K components keep."""
        flat = tokens.reshape(-1, self.dim).float()
        mean = flat.mean(0)
        _, singular, vh = torch.linalg.svd(flat - mean, full_matrices=False)
        self.basis.copy_(vh[: self.components])
        self.mean.copy_(mean)
        coords = (flat - mean) @ self.basis.T
        self.scale.copy_(coords.pow(2).mean().sqrt().clamp_min(1e-6))
        self.fitted.fill_(True)
        energy = singular.pow(2)
        return float(energy[: self.components].sum() / energy.sum())

    def project(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, N, D) standardised -> (B, N, K)."""
        return (tokens - self.mean.to(tokens.dtype)) @ self.basis.T.to(tokens.dtype) / self.scale.to(tokens.dtype)

    def lift(self, coords: torch.Tensor) -> torch.Tensor:
        """(B, N, K) -> (B, N, D) standardised (the projection of the features onto the K components)."""
        return (coords * self.scale.to(coords.dtype)) @ self.basis.to(coords.dtype) + self.mean.to(coords.dtype)
