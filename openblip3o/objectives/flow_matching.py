"""Flow matching (rectified flow), apart from any network: it builds x_t and the target, and walks the schedule.

    x_t = (1 - sigma) * x0 + sigma * eps,    target velocity v = eps - x0,    sigma ~ shift(U(0, 1))

The network is any callable `network(x_t, timestep, cond, cond_mask) -> prediction` with timestep =
sigma * num_train_timesteps (BLIP3-o's convention). Sampling uses `diffusers`' FlowMatchEulerDiscreteScheduler.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from diffusers import DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler
from tqdm.auto import tqdm

from ..config import ObjectiveConfig
from .weighting import per_sample_mse, weighted_mse

Network = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]
MIN_SIGMA = 1e-4  # converting a sample prediction to a velocity divides by sigma
SOLVERS = ("euler", "dpm")
DPM_ORDER = 2  # DPMSolverMultistep's second-order update
# The binding hinge is satisfied once a negative's error exceeds the caption's by this share of it; it asks nothing of
# rows noisier than BINDING_MAX_SIGMA, where x_t shows too little of the layout to say which object is which.
BINDING_MARGIN, BINDING_MAX_SIGMA = 0.05, 0.8


def condition_keep(batch: int, probability: float, device, generator: torch.Generator | None = None) -> torch.Tensor:
    """(B,) bool: which samples keep their condition under classifier-free guidance dropout of `probability`."""
    if probability <= 0:
        return torch.ones(batch, dtype=torch.bool, device=device)
    return torch.rand(batch, generator=generator, device=device) >= probability


def drop_condition(cond: torch.Tensor, probability: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Zero the whole condition of each sample with `probability` (classifier-free guidance training).

    cond: (B, L, D) -> (B, L, D)
    """
    if probability <= 0:
        return cond
    keep = condition_keep(cond.shape[0], probability, cond.device, generator)
    return cond * keep[:, None, None].to(cond.dtype)


class FlowMatching:
    def __init__(self, config: ObjectiveConfig | None = None):
        self.config = config or ObjectiveConfig()

    def shift(self, sigma: torch.Tensor) -> torch.Tensor:
        s = self.config.shift
        return s * sigma / (1 + (s - 1) * sigma)

    def sample_sigmas(self, batch: int, device, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.shift(torch.rand(batch, generator=generator, device=device))

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        return sigma * self.config.num_train_timesteps

    def velocity(self, network: Network, x_t, sigma, cond, cond_mask=None) -> torch.Tensor:
        """The network's prediction as a velocity eps - x0, whatever it was trained to predict."""
        out = network(x_t, self.timestep(sigma), cond, cond_mask)
        if self.config.prediction == "sample":
            sigma = sigma.clamp_min(MIN_SIGMA).view(-1, *([1] * (x_t.dim() - 1)))
            return (x_t - out) / sigma
        return out

    def _noised(self, x0: torch.Tensor, generator: torch.Generator | None):
        """One training draw for clean targets x0 (B, C, H, W): sigma (B,), x_t and the prediction target, then
        which rows keep their condition (CFG dropout), drawn from `generator` in that order."""
        sigma = self.sample_sigmas(x0.shape[0], x0.device, generator)
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        s = sigma.view(-1, *([1] * (x0.dim() - 1))).to(x0.dtype)
        target = x0 if self.config.prediction == "sample" else noise - x0
        keep = condition_keep(x0.shape[0], self.config.condition_dropout, x0.device, generator)
        return sigma, (1 - s) * x0 + s * noise, target, keep

    def loss(self, network: Network, x0: torch.Tensor, cond: torch.Tensor, cond_mask: torch.Tensor | None = None,
             generator: torch.Generator | None = None, weights: torch.Tensor | None = None) -> torch.Tensor:
        """Mean squared error of the prediction (fp32). x0: (B, C, H, W) clean targets; cond: (B, L, D);
        weights: (B, 1, H, W) per-position weights (objectives/weighting.py) or None."""
        sigma, x_t, target, keep = self._noised(x0, generator)
        out = network(x_t, self.timestep(sigma), cond * keep[:, None, None].to(cond.dtype), cond_mask)
        return weighted_mse(out, target, weights)

    def binding_loss(self, network: Network, x0: torch.Tensor, cond: torch.Tensor, cond_mask: torch.Tensor | None,
                     negative: torch.Tensor, negative_mask: torch.Tensor | None, pairs: torch.Tensor,
                     generator: torch.Generator | None = None, weights: torch.Tensor | None = None,
                     margin: float = BINDING_MARGIN, max_sigma: float = BINDING_MAX_SIGMA,
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """The flow loss and a binding hinge from one batched pass: for each row in `pairs`, the same x_t is
        denoised from its caption's condition and from its negative's (objectives' callers build negatives with
        data/shapes/negatives.py: the same words, bound differently), and the hinge asks the caption to explain it
        better: mean of relu(err_caption - err_negative + margin * err_caption) over pairs whose condition was kept
        and whose sigma <= max_sigma (near pure noise nothing says which object is which, so no row there is asked).

        x0: (B, C, H, W); cond: (B, L, D); negative: (P, L, D) for the P rows `pairs` (P,) names, padded alike.
        Returns (flow loss as `loss` computes it, binding hinge), scalars in fp32.
        """
        batch = x0.shape[0]
        sigma, x_t, target, keep = self._noised(x0, generator)
        cond = cond * keep[:, None, None].to(cond.dtype)
        masks = None if cond_mask is None else torch.cat([cond_mask, negative_mask])
        out = network(torch.cat([x_t, x_t[pairs]]), self.timestep(torch.cat([sigma, sigma[pairs]])),
                      torch.cat([cond, negative]), masks)
        flow = weighted_mse(out[:batch], target, weights)
        pair_weights = None if weights is None else weights[pairs]
        err_caption = per_sample_mse(out[pairs], target[pairs], pair_weights)
        err_negative = per_sample_mse(out[batch:], target[pairs], pair_weights)
        asked = keep[pairs] & (sigma[pairs] <= max_sigma)
        hinge = F.relu(err_caption - err_negative + margin * err_caption.detach())
        return flow, (hinge[asked].mean() if bool(asked.any()) else hinge.sum() * 0.0)

    def scheduler(self, solver: str = "euler"):
        """The sampling scheduler: diffusers' FlowMatchEuler (as trained), or DPMSolverMultistep on flow sigmas
        (second order: fewer steps for the same quality). The shift is applied here too, so sampling walks the same
        sigmas training saw."""
        if solver not in SOLVERS:
            raise ValueError(f"solver {solver!r} is not one of {', '.join(SOLVERS)}")
        if solver == "dpm":
            return DPMSolverMultistepScheduler(num_train_timesteps=self.config.num_train_timesteps, use_flow_sigmas=True,
                                               prediction_type="flow_prediction", flow_shift=self.config.shift,
                                               solver_order=DPM_ORDER)
        return FlowMatchEulerDiscreteScheduler(num_train_timesteps=self.config.num_train_timesteps, shift=self.config.shift)

    @torch.no_grad()
    def sample(self, network: Network, noise: torch.Tensor, cond: torch.Tensor, cond_mask: torch.Tensor | None = None,
               uncond: torch.Tensor | None = None, uncond_mask: torch.Tensor | None = None,
               num_inference_steps: int = 30, guidance_scale: float = 3.0, progress: bool = False,
               solver: str = "euler", guided_fraction: float = 1.0, batched_guidance: bool = True) -> torch.Tensor:
        """Integration from noise (sigma 1) to a sample (sigma 0), with classifier-free guidance.

        noise: (B, C, H, W); cond / uncond: (B, L, D). `uncond` None means the zero condition (as trained).
        Guidance 1.0 runs the conditional branch alone. Speed options (the defaults are what the pipeline runs):
        `solver` "dpm" for DPMSolverMultistep; guidance on the first `guided_fraction` of the steps only, the
        conditional branch alone afterwards; `batched_guidance` False runs the two branches as two passes instead of
        one batch of 2B (less memory).
        """
        if num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be at least 1, got {num_inference_steps}")
        if not 0.0 <= guided_fraction <= 1.0:
            raise ValueError(f"guided_fraction must be within [0, 1], got {guided_fraction}")
        scheduler = self.scheduler(solver)
        scheduler.set_timesteps(num_inference_steps, device=noise.device)
        guided_steps = math.ceil(guided_fraction * num_inference_steps) if guidance_scale != 1.0 else 0
        if guided_steps:
            uncond = torch.zeros_like(cond) if uncond is None else uncond
            uncond_mask = cond_mask if uncond_mask is None else uncond_mask
            both = torch.cat([cond, uncond])
            masks = None if cond_mask is None else torch.cat([cond_mask, uncond_mask])
        x = noise
        for step, sigma in enumerate(tqdm(scheduler.sigmas[:-1], desc="sampling", disable=not progress, leave=False)):
            sigma_batch = sigma.expand(x.shape[0]).to(noise.device)
            if step < guided_steps and batched_guidance:
                v_cond, v_uncond = self.velocity(network, torch.cat([x, x]), sigma_batch.repeat(2), both, masks).chunk(2)
                v = v_uncond + guidance_scale * (v_cond - v_uncond)
            elif step < guided_steps:
                v_cond = self.velocity(network, x, sigma_batch, cond, cond_mask)
                v_uncond = self.velocity(network, x, sigma_batch, uncond, uncond_mask)
                v = v_uncond + guidance_scale * (v_cond - v_uncond)
            else:
                v = self.velocity(network, x, sigma_batch, cond, cond_mask)
            # Schedulers step in fp32; the sample keeps the noise's dtype (bf16 at full scale).
            x = scheduler.step(v, scheduler.timesteps[step], x, return_dict=False)[0].to(noise.dtype)
        return x
