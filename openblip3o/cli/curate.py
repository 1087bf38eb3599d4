"""`openblip3o curate`: build the instruction-tuning set (prompts -> image API or local pipeline -> shards)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from .errors import user_errors


@user_errors
def curate(
    config: Path = typer.Option(..., "--config", help="YAML config (see configs/curate-mini.yaml); keys are strict."),
    backend: str = typer.Option(None, "--backend", help="'http' (an OpenAI-compatible endpoint), 'local' (a "
                                                        "pipeline called directly, no server) or 'render' (mini: "
                                                        "ShapesWorld's exact renderer). Default: the config's."),
    base_url: str = typer.Option(None, "--base-url", help="Image endpoint, e.g. http://127.0.0.1:8000/v1 "
                                                          "(else OPENBLIP3O_CURATE_BASE_URL, else the config)."),
    model: str = typer.Option(None, "--model", help="Model name sent to the endpoint (else OPENBLIP3O_CURATE_MODEL)."),
    out: str = typer.Option(None, "--out", help="Output folder (default: the config's out_dir)."),
    num_items: int = typer.Option(None, "--num-items", help="Number of prompts (default: the config's)."),
    retry_failed: bool = typer.Option(None, "--retry-failed/--keep-failed",
                                      help="Retry items the failure log already holds."),
    progress: bool = typer.Option(None, "--progress/--no-progress", help="Show the progress bar."),
):
    """Make (or resume) a curated prompt-image set; a rerun makes only what is missing. The API key comes from
    OPENBLIP3O_CURATE_API_KEY (or the config) and is never printed. Prints the manifest's counts as JSON."""
    from ..curation import curate as run_curation
    from ..curation import load_config

    cfg = load_config(config, backend=backend, base_url=base_url, model=model, out_dir=out, num_items=num_items,
                      retry_failed=retry_failed, progress=progress)

    def note(message: str) -> None:
        typer.secho(message, err=True, fg=typer.colors.YELLOW)

    manifest = run_curation(cfg, notes=note)
    summary = {k: manifest[k] for k in ("planned", "accepted", "failed", "missing", "failures", "per_category",
                                        "this_run")}
    typer.echo(json.dumps({"out_dir": cfg.out_dir, **summary}, indent=2))
