"""The scorers a training run measures itself with (`training.checks.Scorers`), built from evaluation's parts:
ShapesWorld's detector, its foreground colour, and the DiT's prompt sensitivity. The CLI, the study runner and the
golden-loss test all hand `run_training` these same ones."""

from __future__ import annotations

from ..evaluation.condition import generator_sensitivity
from ..evaluation.geneval.detector import detect, foreground_colour
from ..training.checks import Scorers


def training_scorers() -> Scorers:
    return Scorers(detect=detect, sensitivity=generator_sensitivity, colour=foreground_colour)
