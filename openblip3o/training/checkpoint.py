"""Training checkpoints: written to a temporary folder and renamed, so a kill never leaves a half checkpoint.

A checkpoint folder holds `modules.safetensors` (trainable weights), `ema.safetensors` (when EMA is on),
`optimizer.pt` (optimizer state: tensors and numbers only, read back with `weights_only=True`), `rng.pt`
and `state.json` (step, scheduler, EMA counters, bad-step count). `latest` names the newest complete one.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

LATEST = "latest"
PREFIX = "step-"


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def rng_state() -> dict:
    return {
        "torch": torch.get_rng_state(),
        "python": list(random.getstate()[1]),
        "python_pos": random.getstate()[2],
        "numpy": torch.from_numpy(np.random.get_state()[1].astype(np.int64)),
        "numpy_pos": int(np.random.get_state()[2]),
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(state["python"]), state["python_pos"]))
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))


def save_checkpoint(root: Path, step: int, modules: dict[str, torch.Tensor], optimizer_state: dict, state: dict,
                    ema: dict[str, torch.Tensor] | None = None, keep: int = 2) -> Path:
    """Write checkpoint `step` under `root` atomically and prune all but the newest `keep`."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{PREFIX}{step:08d}"
    tmp = root / f".{final.name}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file({k: v.detach().contiguous().cpu() for k, v in modules.items()}, str(tmp / "modules.safetensors"))
    if ema is not None:
        save_file({k: v.detach().contiguous().cpu() for k, v in ema.items()}, str(tmp / "ema.safetensors"))
    torch.save(optimizer_state, tmp / "optimizer.pt")
    torch.save(rng_state(), tmp / "rng.pt")
    (tmp / "state.json").write_text(json.dumps(state, indent=2), encoding="utf-8")
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    _atomic_write_text(root / LATEST, final.name)
    for old in sorted(p for p in root.glob(f"{PREFIX}*") if p.is_dir())[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(root: Path) -> Path | None:
    pointer = root / LATEST
    if not pointer.is_file():
        return None
    path = root / pointer.read_text(encoding="utf-8").strip()
    return path if (path / "state.json").is_file() else None


def load_checkpoint(path: Path) -> dict:
    """{"modules", "ema" (or None), "optimizer", "rng", "state"}."""
    ema_path = path / "ema.safetensors"
    return {
        "modules": load_file(str(path / "modules.safetensors")),
        "ema": load_file(str(ema_path)) if ema_path.is_file() else None,
        "optimizer": torch.load(path / "optimizer.pt", weights_only=True),
        "rng": torch.load(path / "rng.pt", weights_only=True),
        "state": json.loads((path / "state.json").read_text(encoding="utf-8")),
    }
