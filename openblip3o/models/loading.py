"""Strict loading: a checkpoint folder missing a file, or with missing, unexpected or mis-shaped weights,
is an error naming the cause; never a silent partial load."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from .errors import CheckpointError  # defined apart so the CLI can catch it without importing torch


def require_files(directory: Path, names: list[str], component: str) -> None:
    if not directory.is_dir():
        raise CheckpointError(f"{component}: checkpoint folder {directory} is missing")
    missing = [n for n in names if not (directory / n).is_file()]
    if missing:
        raise CheckpointError(f"{component}: {directory} lacks {', '.join(missing)}")


def check_loading_info(info: dict, component: str, directory: Path) -> None:
    """Raise on anything `from_pretrained(..., output_loading_info=True)` reports as not loaded exactly."""
    problems = []
    for key in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"):
        found = list(info.get(key) or [])
        if found:
            problems.append(f"{key.replace('_', ' ')}: {', '.join(map(str, found[:8]))}{' ...' if len(found) > 8 else ''}")
    if problems:
        raise CheckpointError(f"{component}: {directory} does not match the model ({'; '.join(problems)})")


def load_state_strict(module: torch.nn.Module, path: Path, component: str, optional_prefix: str | None = None) -> None:
    """Load a safetensors file into `module`, every key present and every shape equal (keys under
    `optional_prefix` may be absent from the file: they keep the module's values)."""
    if not path.is_file():
        raise CheckpointError(f"{component}: {path} is missing")
    state = load_file(str(path))
    own = module.state_dict()
    missing = sorted(k for k in set(own) - set(state) if not (optional_prefix and k.startswith(optional_prefix)))
    unexpected = sorted(set(state) - set(own))
    mismatched = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own if k in state and state[k].shape != own[k].shape]
    check_loading_info({"missing_keys": missing, "unexpected_keys": unexpected, "mismatched_keys": mismatched}, component, path)
    module.load_state_dict(state, strict=not optional_prefix)
