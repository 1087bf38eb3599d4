"""The model-loading error, in a module that imports nothing heavy: the CLI catches it on every command (including
`--help`), which must not pay for importing torch."""

from __future__ import annotations


class CheckpointError(ValueError):
    """A checkpoint folder that does not match the model it should load into."""
