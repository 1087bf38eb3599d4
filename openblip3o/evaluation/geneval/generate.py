"""Generate images for any GenEval metadata file in the official layout, resumably, with the settings recorded.

`DIR/NNNNN/metadata.jsonl` + `DIR/NNNNN/samples/NNNNN.png` (+ `grid.png`), as the official generation script
writes them, so the official evaluator (full scale) or `openblip3o eval score` (ShapesWorld) runs on it.
As in the reference script, every prompt's sample j starts from the same seed (seed + j).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import torch
from diffusers.utils import make_image_grid
from tqdm import tqdm

from ...config import SamplingSettings
from .layout import prompt_dir, sample_path, write_prompt_metadata

SETTINGS_FILE = "settings.json"


def model_hash(pipe) -> str:
    """A short hash of every weight of the pipeline's model, so scores name exactly what made them."""
    digest = hashlib.sha256()
    for name, tensor in sorted(pipe.model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().float().numpy().tobytes())
    return digest.hexdigest()[:16]


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _finished(out: Path, index: int, n_samples: int) -> bool:
    return all(sample_path(out, index, j).is_file() for j in range(n_samples))


def run_settings(pipe, seed: int, prompts: int, sampling: SamplingSettings) -> dict:
    """What a benchmark run was made with (written beside its images): model, hash, seed, the sampling settings
    resolved against the model's defaults, image size, prompt count and the code's commit."""
    config = pipe.config
    return {
        "model": config.name, "model_hash": model_hash(pipe), "seed": seed, **sampling.resolved(config).as_kwargs(),
        "image_size": config.decoder.image_size, "prompts": prompts, "commit": _commit(),
    }


def resolved_sampling(settings: dict) -> dict:
    """The pipeline keyword arguments of the sampling settings `run_settings` recorded."""
    return {name: settings[name] for name in SamplingSettings().as_kwargs()}


def generate_layout(pipe, records: list[dict], out_dir: str | Path, n_samples: int = 4, batch_size: int = 16,
                    seed: int = 42, sampling: SamplingSettings = SamplingSettings(), grid: bool = True,
                    progress: bool = True) -> dict:
    """Write `n_samples` images per record; prompts already complete are skipped. Returns the settings."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    settings = {**run_settings(pipe, seed, len(records), sampling), "n_samples": n_samples}
    (out / SETTINGS_FILE).write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")
    todo = [(i, j) for i in range(len(records)) if not _finished(out, i, n_samples) for j in range(n_samples)]
    bar = tqdm(total=len(todo), desc="generating", unit="img", disable=not progress)
    for first in range(0, len(todo), batch_size):
        chunk = todo[first : first + batch_size]
        images = pipe(
            [records[i]["prompt"] for i, _ in chunk],
            generator=[torch.Generator().manual_seed(seed + j) for _, j in chunk],
            **resolved_sampling(settings), progress=False,
        ).images
        for (i, j), image in zip(chunk, images):
            if j == 0 or not (prompt_dir(out, i) / "metadata.jsonl").is_file():
                write_prompt_metadata(out, i, records[i])
            image.save(sample_path(out, i, j))
            if grid and j == n_samples - 1:
                samples = [sample_path(out, i, k) for k in range(n_samples)]
                from PIL import Image

                make_image_grid([Image.open(p) for p in samples], 1, n_samples).save(prompt_dir(out, i) / "grid.png")
        bar.update(len(chunk))
    bar.close()
    return settings
