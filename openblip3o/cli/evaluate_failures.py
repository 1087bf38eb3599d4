"""`openblip3o eval failures DIR`: why a scored mini GenEval folder's images failed, per tag."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from .errors import user_errors


@user_errors
def failures(
    directory: Path = typer.Argument(..., help="A folder scored by `openblip3o eval score` (or its results JSONL)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object: tags (each failure kind's share), "
                                 "when_drawn (per tag: accuracy once its objects are drawn), images."),
):
    """Each failed image's first mistake (missing object, extra object, colour, relation) per tag, and how often the
    relation and the colours are right once the objects are drawn: which stage a tag's misses point at (about 0.5
    once drawn: the words are not followed)."""
    from ..data.shapes.rules import FAILURE_KINDS
    from ..evaluation.geneval.failures import failure_breakdown, read_results

    breakdown = failure_breakdown(read_results(directory))
    if as_json:
        typer.echo(json.dumps(breakdown))
        return
    kinds = ("correct", *FAILURE_KINDS)
    typer.echo(f"{'tag':<14}" + "".join(f"{k:>10}" for k in kinds) + f"{'images':>8}")
    for tag, row in breakdown["tags"].items():
        typer.echo(f"{tag:<14}" + "".join(f"{row[k]:>10.3f}" for k in kinds) + f"{row['images']:>8}")
    for tag, item in breakdown["when_drawn"].items():
        value = "–" if item["accuracy"] is None else f"{item['accuracy']:.3f}"
        typer.echo(f"{tag}: {item['kind']} right once the objects are drawn {value} ({item['images']} images)")
