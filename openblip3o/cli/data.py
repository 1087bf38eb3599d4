"""`openblip3o data ...`: ShapesWorld shards, GenEval-schema prompt sets, ground-truth renders."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path

import typer

from .errors import user_errors

app = typer.Typer(help="Make ShapesWorld data: shards, prompt sets, ground-truth renders.", no_args_is_help=True)


class Split(str, Enum):
    train = "train"
    eval = "eval"
    heldout = "heldout"


class PromptSplit(str, Enum):
    eval = "eval"
    heldout = "heldout"


@app.command()
@user_errors
def shapes(
    out: Path = typer.Option(..., help="Output folder for the .tar shards and manifest.json."),
    num: int = typer.Option(..., help="Number of scenes."),
    shard_size: int = typer.Option(1000, help="Scenes per shard."),
    split: Split = typer.Option(Split.train, help="train: never a held-out combination; heldout: built from them."),
    seed: int = typer.Option(0, help="World seed: scene i is a pure function of (seed, i, split)."),
    workers: int = typer.Option(0, help="Processes (0 = one per core)."),
):
    """Write ShapesWorld scenes as webdataset shards (png + json with captions, VQA, GenEval metadata)."""
    from ..data.shard_writer import write_shapes_shards

    manifest = write_shapes_shards(out, num, shard_size=shard_size, split=split.value, seed=seed, workers=workers or None)
    typer.echo(f"wrote {manifest['num']} scenes in {len(manifest['shards'])} shards to {out}")


@app.command()
@user_errors
def prompts(
    out: Path = typer.Option(..., help="Output metadata JSONL file."),
    split: PromptSplit = typer.Option(PromptSplit.heldout, help="heldout: compositions never seen in training."),
    seed: int = typer.Option(43, help="Prompt seed (GenEval's own is 43)."),
):
    """Write a 553-prompt GenEval-schema evaluation set (GenEval's per-tag counts)."""
    from ..data.shapes.prompts import evaluation_set

    records = evaluation_set(split.value, seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    typer.echo(f"wrote {len(records)} prompts to {out}")


@app.command()
@user_errors
def render(
    metadata: Path = typer.Option(..., help="GenEval metadata JSONL (ShapesWorld classes and colours)."),
    out: Path = typer.Option(..., help="Output folder in GenEval's layout."),
    n_samples: int = typer.Option(4, help="Images per prompt."),
    seed: int = typer.Option(0, help="Placement seed."),
):
    """Render ground-truth images for every prompt of a metadata file, in GenEval's folder layout."""
    from ..evaluation.geneval.groundtruth import render_layout
    from ..evaluation.geneval.layout import read_metadata_file

    records = read_metadata_file(metadata)
    render_layout(records, out, n_samples=n_samples, seed=seed, source=str(metadata))
    typer.echo(f"rendered {len(records)} prompts x {n_samples} images to {out}")


@app.command()
@user_errors
def preview(
    out: Path = typer.Option(..., help="Output PNG."),
    num: int = typer.Option(8, help="Number of scenes."),
    split: Split = typer.Option(Split.train, help="Which split to draw from."),
    seed: int = typer.Option(0, help="World seed."),
    caption: str = typer.Option("prompt", help="Label under each image: prompt, short or long."),
):
    """Save a contact sheet of ShapesWorld scenes with their prompt or caption."""
    from ..data.shapes import ShapesWorld
    from ..utils.images import contact_sheet

    if caption not in ("prompt", "short", "long"):
        raise ValueError(f"unknown caption {caption!r}; choose prompt, short or long")
    if num < 1:
        raise ValueError("num must be at least 1")
    world = ShapesWorld(split.value, seed)
    examples = [world[i] for i in range(num)]
    labels = [e.annotation["prompt"] if caption == "prompt" else e.annotation["captions"][caption] for e in examples]
    out.parent.mkdir(parents=True, exist_ok=True)
    contact_sheet([e.image for e in examples], labels, columns=min(4, num), label_lines=6 if caption == "long" else 3).save(out)
    typer.echo(f"wrote {out}")
