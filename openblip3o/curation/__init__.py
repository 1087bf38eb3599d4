"""Curation of the instruction-tuning set (the BLIP3o-60k recipe): prompts -> an image API -> filtered shards.

    from openblip3o.curation import load_config, curate
    manifest = curate(load_config("configs/curate-mini.yaml", backend="local"))

See `run.py` for the flow and its resume guarantees, `openblip3o curate --help` for the command.
"""

from .config import CurateConfig, load_config
from .dedup import Deduplicator, deduplicate, normalise
from .items import Item
from .prompts import build_prompts, load_categories
from .run import curate

__all__ = ["CurateConfig", "Deduplicator", "Item", "build_prompts", "curate", "deduplicate", "load_categories",
           "load_config", "normalise"]
