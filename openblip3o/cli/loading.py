"""Loading a pipeline for a command: the shared loader, with its load-time warnings as one 'note:' line each."""

from __future__ import annotations

import typer


def load_for_command(model: str):
    """The `LoadedModel` for `--model` (a saved folder or a preset); notes go to stderr, not a warning's source line."""
    from ..inference.load import load_model

    loaded = load_model(model)
    for note in loaded.notes:
        typer.secho(f"note: {note}", err=True, fg=typer.colors.YELLOW)
    return loaded
