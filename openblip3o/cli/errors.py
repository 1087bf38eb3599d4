"""User mistakes end a command with a one-line message and exit code 2, never a traceback."""

from __future__ import annotations

import functools

import typer

from ..data.shapes.sampler import PlacementError
from ..evaluation.geneval.layout import MetadataError
from ..models.loading import CheckpointError

USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, MetadataError, PlacementError, CheckpointError)
USER_ERROR_EXIT = 2


def user_errors(command):
    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except USER_ERRORS as err:
            typer.secho(f"error: {err}", err=True, fg=typer.colors.RED)
            raise typer.Exit(USER_ERROR_EXIT) from None

    return wrapper
