"""Generate images for any GenEval metadata file in the official layout, resumably, with the settings recorded.

`DIR/NNNNN/metadata.jsonl` + `DIR/NNNNN/samples/NNNNN.png` (+ `grid.png`), as the official generation script
writes them, so the official evaluator (full scale) or `openblip3o eval score` (ShapesWorld) runs on it.
As in the reference script (which reseeds before every prompt), every prompt's sample j starts from the same seed
(seed + j): the N samples are N noise draws shared by all prompts, so a lucky or unlucky draw moves every prompt
together. `seed_per_prompt` gives each (prompt i, sample j) its own seed instead (seed + i * N + j, as
`openblip3o generate` numbers its images), so N samples of P prompts are P * N independent draws.
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
SEED_SCHEMES = ("shared", "per_prompt")
# Settings that may differ when a run is resumed (everything else must match what made the images already there).
RESUMABLE_KEYS = ("commit",)


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


def sample_seed(seed: int, index: int, sample: int, n_samples: int, scheme: str = "shared") -> int:
    """The seed of prompt `index`'s sample `sample`: seed + sample ("shared", the reference script's scheme) or
    seed + index * n_samples + sample ("per_prompt")."""
    if scheme not in SEED_SCHEMES:
        raise ValueError(f"seed scheme must be one of {SEED_SCHEMES}, got {scheme!r}")
    return seed + sample + (index * n_samples if scheme == "per_prompt" else 0)


def _check_resumable(out: Path, settings: dict) -> None:
    """Refuse to add images to a folder whose earlier images were made with other settings (mixed runs score as one)."""
    path = out / SETTINGS_FILE
    if not path.is_file():
        return
    try:
        before = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ValueError(f"{path} is unreadable ({error}); move the folder aside or pick a new --out") from error
    before.setdefault("seed_scheme", "shared")  # folders written before the option existed
    # A setting an older version did not record (it had no such choice) is not a change.
    changed = sorted(k for k in settings.keys() & before.keys()
                     if k not in RESUMABLE_KEYS and settings[k] != before[k])
    if changed:
        detail = ", ".join(f"{k}: {before.get(k)!r} -> {settings.get(k)!r}" for k in changed)
        raise ValueError(f"{out} holds images made with other settings ({detail}); pick a new --out to start over")


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
                    progress: bool = True, seed_per_prompt: bool = False) -> dict:
    """Write `n_samples` images per record; prompts already complete are skipped. Returns the settings.

    A folder is resumed only with the settings that made it (model hash, seeds, sampling): else ValueError."""
    out = Path(out_dir)
    scheme = "per_prompt" if seed_per_prompt else "shared"
    settings = {**run_settings(pipe, seed, len(records), sampling), "n_samples": n_samples, "seed_scheme": scheme}
    _check_resumable(out, settings)
    out.mkdir(parents=True, exist_ok=True)
    (out / SETTINGS_FILE).write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")
    todo = [(i, j) for i in range(len(records)) if not _finished(out, i, n_samples) for j in range(n_samples)]
    bar = tqdm(total=len(todo), desc="generating", unit="img", disable=not progress)
    for first in range(0, len(todo), batch_size):
        chunk = todo[first : first + batch_size]
        images = pipe(
            [records[i]["prompt"] for i, _ in chunk],
            generator=[torch.Generator().manual_seed(sample_seed(seed, i, j, n_samples, scheme)) for i, j in chunk],
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
