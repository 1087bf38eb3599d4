"""The `openblip3o` command: subcommands generated from typed function signatures (typer)."""

from __future__ import annotations

import typer

from . import data, evaluate
from .convert import convert
from .curate import curate
from .generate import ask, generate
from .info import info
from .serve import demo, serve
from .study import study
from .train import train

app = typer.Typer(
    name="openblip3o",
    help="Unified multimodal models the BLIP3-o way: understand images and generate them from text.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(data.app, name="data")
app.add_typer(evaluate.app, name="eval")
app.command()(info)
app.command()(train)
app.command()(generate)
app.command()(ask)
app.command()(serve)
app.command()(demo)
app.command()(study)
app.command()(convert)
app.command()(curate)


@app.command()
def version():
    """Print the installed version."""
    from .. import __version__

    typer.echo(__version__)


def main():
    app()
