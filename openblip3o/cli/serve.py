"""`openblip3o serve` (OpenAI-compatible HTTP API) and `openblip3o demo` (Gradio app), one shared pipeline each."""

from __future__ import annotations

import typer

from .errors import user_errors
from .loading import load_for_command

DEFAULT_HOST = "127.0.0.1"  # local only unless asked: the server has no rate limiting per client
DEFAULT_PORT = 8000
DEFAULT_DEMO_PORT = 7860
API_KEY_ENV = "OPENBLIP3O_API_KEY"  # keeps the key out of `ps` output
SERVE_EXTRA_HINT = 'this command needs the serving extras: pip install "openblip3o[serve]"'


def _require(module: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise ValueError(f"{module} is not installed; {SERVE_EXTRA_HINT}")


def _check_port(port: int) -> None:
    if not 0 < port < 65536:
        raise ValueError(f"--port must be between 1 and 65535, got {port}")


@user_errors
def serve(
    host: str = typer.Option(DEFAULT_HOST, help="Interface to listen on (0.0.0.0 for every interface)."),
    port: int = typer.Option(DEFAULT_PORT, help="TCP port."),
    api_key: str = typer.Option(None, envvar=API_KEY_ENV, help="Require 'Authorization: Bearer KEY' on /v1 routes."),
    model: str = typer.Option("mini", help="A folder written by save_pretrained, or 'mini' (the shipped default)."),
    max_batch: int = typer.Option(None, help="Most images (or questions) per pipeline call [default: 16]."),
    max_wait_ms: float = typer.Option(None, help="How long a request waits for others to batch with [default: 20]."),
    max_queue: int = typer.Option(None, help="Requests waiting before new ones get 429 [default: 64]."),
    max_n: int = typer.Option(None, help="Most images per request [default: 8]."),
    log_level: str = typer.Option("info", help="uvicorn log level."),
):
    """Serve the model over an OpenAI-compatible HTTP API (images, chat with images, models, health)."""
    import dataclasses

    _require("fastapi")
    _require("uvicorn")
    import uvicorn

    from ..serving.api import create_app
    from ..serving.limits import Limits

    _check_port(port)
    overrides = {"max_batch": max_batch, "max_wait_ms": max_wait_ms, "max_queue": max_queue, "max_n": max_n}
    for name, value in overrides.items():
        lowest = 0 if name == "max_wait_ms" else 1  # 0 ms: no waiting, batch only what is already queued
        if value is not None and value < lowest:
            raise ValueError(f"--{name.replace('_', '-')} must be at least {lowest}")
    limits = dataclasses.replace(Limits(), **{k: v for k, v in overrides.items() if v is not None})
    loaded = load_for_command(model)
    app = create_app(loaded.pipe, loaded.model_id, api_key=api_key, limits=limits)
    auth = "API key required" if api_key else "no API key"
    typer.echo(f"serving {loaded.model_id!r} on http://{host}:{port}/v1 ({auth})", err=True)
    uvicorn.run(app, host=host, port=port, log_level=log_level)


@user_errors
def demo(
    host: str = typer.Option(DEFAULT_HOST, help="Interface to listen on (0.0.0.0 for every interface)."),
    port: int = typer.Option(DEFAULT_DEMO_PORT, help="TCP port."),
    model: str = typer.Option("mini", help="A folder written by save_pretrained, or 'mini' (the shipped default)."),
):
    """A Gradio app in the browser: a Generate tab (prompt -> gallery) and an Ask tab (image + question -> answer)."""
    _require("gradio")
    from ..serving.demo import launch_demo

    _check_port(port)
    loaded = load_for_command(model)
    typer.echo(f"demo of {loaded.model_id!r} on http://{host}:{port}", err=True)
    launch_demo(loaded.pipe, loaded.model_id, host=host, port=port)
