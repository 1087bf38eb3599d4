"""Ground-truth renders of a GenEval metadata file, written in the official layout.

These are the scorer's reference point: every image satisfies its record exactly, so the rule scorer must
score them (nearly) perfectly, and must fail them once their metadata is shuffled.
"""

from __future__ import annotations

import random
from pathlib import Path

from tqdm import tqdm

from ...data.shapes.prompts import validate_record
from ...data.shapes.render import render_scene
from ...data.shapes.sampler import realise
from ...data.shapes.world import WorldConfig
from .layout import MetadataError, sample_path, write_prompt_metadata


def sample_rng(seed: int, prompt_index: int, sample_index: int) -> random.Random:
    return random.Random(f"groundtruth:{seed}:{prompt_index}:{sample_index}")


def render_layout(records: list[dict], out_dir: str | Path, n_samples: int = 4, seed: int = 0,
                  config: WorldConfig | None = None, progress: bool = True, source: str = "metadata") -> Path:
    """Write `out_dir/NNNNN/metadata.jsonl` and `n_samples` ground-truth PNGs per record."""
    if n_samples < 1:
        raise ValueError(f"n_samples must be at least 1, got {n_samples}")
    config = config or WorldConfig()
    for line_no, rec in enumerate(records, start=1):
        try:
            validate_record(rec)
        except ValueError as err:
            raise MetadataError(f"{source}:{line_no}: {err}") from None
    out = Path(out_dir)
    for index, rec in enumerate(tqdm(records, desc="rendering", unit="prompt", disable=not progress)):
        write_prompt_metadata(out, index, rec)
        for sample in range(n_samples):
            scene = realise(rec, sample_rng(seed, index, sample), config)
            render_scene(scene, config).save(sample_path(out, index, sample))
    return out
