"""The diffusion transformer: `diffusers.LuminaNextDiT2DModel` over the grid of target tokens.

It knows nothing of flow matching: `forward(x_t, timestep, cond, cond_mask) -> prediction`, the `Network`
signature of `openblip3o.objectives`. Full scale is BLIP3-o's setting (24 layers, width 1792, 28 heads, patch 1
on an 8x8 grid, cross-attention to the backbone's query states).
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
import torch.utils.checkpoint
from diffusers import LuminaNextDiT2DModel
from diffusers.models.embeddings import get_2d_rotary_pos_embed_lumina
from torch import nn

from ..config import GeneratorConfig
from .loading import check_loading_info, require_files

PAD_TOKEN_STD = 0.02


class Generator(nn.Module):
    def __init__(self, config: GeneratorConfig, in_channels: int, grid_size: int, condition_dim: int):
        super().__init__()
        if config.hidden_size % config.num_attention_heads:
            raise ValueError(
                f"generator.hidden_size {config.hidden_size} is not divisible by num_attention_heads "
                f"{config.num_attention_heads}"
            )
        if grid_size % config.patch_size:
            raise ValueError(f"grid size {grid_size} is not divisible by generator.patch_size {config.patch_size}")
        self.dit = LuminaNextDiT2DModel(
            sample_size=grid_size,
            patch_size=config.patch_size,
            in_channels=in_channels,
            hidden_size=config.hidden_size,
            num_layers=config.num_layers,
            num_attention_heads=config.num_attention_heads,
            num_kv_heads=config.num_kv_heads,
            multiple_of=config.multiple_of,
            norm_eps=config.norm_eps,
            learn_sigma=False,  # its default doubles the output channels
            qk_norm=True,
            cross_attention_dim=condition_dim,
        )
        with torch.no_grad():
            # diffusers leaves pad_token as torch.empty (uninitialised memory, NaN at times: unused with patch 1 on
            # this grid, but it broke exact weight comparisons); Lumina-Next's own code draws it from N(0, 0.02).
            self.dit.pad_token.normal_(std=PAD_TOKEN_STD)
            for layer in self.dit.layers:
                layer.gate.fill_(config.cross_attention_gate_init)
        self._init_rotary()

    def _init_rotary(self) -> None:
        cfg = self.dit.config
        tokens = cfg.sample_size // cfg.patch_size
        # Lumina's table is position-wise, so the grid's own size gives the top-left of the usual 384x384 table.
        # Not a buffer: `Module.to(dtype)` casts complex buffers to the real dtype, dropping the imaginary part,
        # which silently turns the rotary position embedding into a per-position scale (the DiT loses positions).
        self._rotary = get_2d_rotary_pos_embed_lumina(cfg.hidden_size // cfg.num_attention_heads, tokens, tokens)

    def rotary(self, device: torch.device) -> torch.Tensor:
        """The complex rotary table (G/p, G/p, head_dim/2) on `device` (moved once, then cached)."""
        if self._rotary.device != device:
            self._rotary = self._rotary.to(device)
        return self._rotary

    def enable_activation_checkpointing(self) -> None:
        """Recompute each DiT block in the backward pass: activation memory traded for compute. diffusers'
        LuminaNextDiT2DModel declares no gradient-checkpointing support, so each block's forward is wrapped in place
        (the weights keep their names: saving and loading are unchanged)."""
        for block in self.dit.layers:
            block.forward = functools.partial(torch.utils.checkpoint.checkpoint, block.forward, use_reentrant=False)

    def forward(self, x: torch.Tensor, timestep: torch.Tensor, cond: torch.Tensor,
                cond_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, C, G, G); timestep: (B,); cond: (B, L, D); cond_mask: (B, L) or None -> (B, C, G, G)."""
        if cond_mask is None:
            cond_mask = torch.ones(cond.shape[:2], dtype=torch.bool, device=cond.device)
        return self.dit(
            x, timestep.to(x.dtype), cond.to(x.dtype), cond_mask, self.rotary(x.device), cross_attention_kwargs={},
            return_dict=False,
        )[0]

    def save_pretrained(self, directory: str | Path) -> None:
        self.dit.save_pretrained(directory, safe_serialization=True)

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> Generator:
        directory = Path(directory)
        require_files(directory, ["config.json"], "generator")
        dit, info = LuminaNextDiT2DModel.from_pretrained(directory, output_loading_info=True, low_cpu_mem_usage=False)
        check_loading_info(info, "generator", directory)
        module = cls.__new__(cls)
        nn.Module.__init__(module)
        module.dit = dit
        module._init_rotary()
        return module
