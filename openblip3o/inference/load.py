"""The one way every entry point loads a pipeline (CLI, server, demo, local curation), and the id it is served under."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

DEFAULT_MODEL = "mini"


@dataclass
class LoadedModel:
    """A pipeline plus its public id: `mini` for the shipped default, the folder's name for `--model DIR`."""

    pipe: object  # BLIP3oPipeline (imported lazily: `--help` must not import torch)
    model_id: str
    notes: list[str]


def model_id_for(name_or_path: str | Path) -> str:
    path = Path(name_or_path)
    if path.is_dir():
        return path.resolve().name
    return str(name_or_path)


def load_model(name_or_path: str | Path = DEFAULT_MODEL) -> LoadedModel:
    """Load a saved pipeline folder or a preset with shipped weights.

    Warnings (e.g. "no trained weights shipped; random weights") are collected as one-line notes rather than printed
    with a source line, so every command can show them its own way. Missing folders raise `CheckpointError`.
    """
    from .pipeline import BLIP3oPipeline

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pipe = BLIP3oPipeline.from_pretrained(name_or_path)
    notes = list(dict.fromkeys(str(w.message) for w in caught if issubclass(w.category, UserWarning)))
    return LoadedModel(pipe=pipe, model_id=model_id_for(name_or_path), notes=notes)
