"""`openblip3o info`: each component's class and parameter count, built on the meta device."""

from __future__ import annotations

import json

import typer

from .errors import user_errors


@user_errors
def info(
    preset: str = typer.Option("mini", help="Preset: mini, blip3o-4b or blip3o-8b."),
    as_json: bool = typer.Option(False, "--json", help='Print one object: {"components": {...}, "total_parameters": int}.'),
):
    """Component classes and parameter counts of a preset (no weights are allocated)."""
    from ..models.inventory import component_inventory
    from ..presets import get_preset

    inventory = component_inventory(get_preset(preset))
    skipped = inventory.pop("skipped", {})
    if as_json:
        typer.echo(json.dumps(inventory))
    else:
        typer.echo(f"{'component':<18} {'class':<36} {'parameters':>16}")
        for name, row in inventory["components"].items():
            typer.echo(f"{name:<18} {row['class']:<36} {row['parameters']:>16,}")
        typer.echo(f"{'total':<18} {'':<36} {inventory['total_parameters']:>16,}")
    for name, reason in skipped.items():
        typer.secho(f"note: {name} not counted: {reason}", err=True, fg=typer.colors.YELLOW)
