"""`openblip3o eval drift --model M --reference R`: how far M's generation moved from R's, link by link."""

from __future__ import annotations

import json

import typer

from .errors import user_errors
from .loading import load_for_command

DRIFT_KEYS = ("condition", "generator_output", "samples", "seed_spread")


@user_errors
def drift(
    model: str = typer.Option("mini", "--model", help="A folder written by save_pretrained, or 'mini'."),
    reference: str = typer.Option(..., "--reference", help="The pipeline compared with (a folder, or 'mini')."),
    num: int = typer.Option(64, "--num", help="Distinct prompts of the held-out GenEval-schema set."),
    seed: int = typer.Option(0, "--seed", help="Noise seed (prompt i samples from seed + i)."),
    split: str = typer.Option("heldout", "--split", help="Prompt set: heldout or eval."),
    as_json: bool = typer.Option(False, "--json", help="Print one object: condition, generator_output, samples, "
                                 "seed_spread, prompts."),
):
    """Relative change of the condition, of the DiT's output at fixed noise and of the sampled tokens (same seeds)
    against a reference pipeline, beside the reference's own seed-to-seed spread: whether a backbone trained
    further for understanding still gives the generator the condition it was trained on."""
    from ..evaluation.drift import generation_drift

    if split not in ("heldout", "eval"):
        raise ValueError(f"--split must be heldout or eval, got {split!r}")
    result = generation_drift(load_for_command(model).pipe, load_for_command(reference).pipe, num=num, seed=seed,
                              split=split)
    if as_json:
        typer.echo(json.dumps(result))
        return
    for key in DRIFT_KEYS:
        typer.echo(f"{key:<17} {result[key]:.4f}")
    typer.echo(f"{'prompts':<17} {result['prompts']}")
