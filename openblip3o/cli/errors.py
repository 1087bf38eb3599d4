"""User mistakes end a command with a one-line message and exit code 2, never a traceback."""

from __future__ import annotations

import functools

import typer

from ..data.shapes.sampler import PlacementError
from ..evaluation.geneval.layout import MetadataError
from ..models.errors import CheckpointError

# Paths the user named that exist as the wrong kind of thing, or that they may not write, are their mistakes too.
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, FileExistsError, IsADirectoryError, PermissionError,
               MetadataError, PlacementError, CheckpointError)
USER_ERROR_EXIT = 2


def user_errors(command):
    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except USER_ERRORS as err:
            # The message may quote what the user typed: undecodable bytes in it arrive as lone surrogates, which
            # no output encoding accepts; they are shown escaped rather than raising while the error is printed.
            message = str(err).encode("utf-8", "backslashreplace").decode("utf-8")
            typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
            raise typer.Exit(USER_ERROR_EXIT) from None

    return wrapper
