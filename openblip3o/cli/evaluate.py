"""`openblip3o eval ...`: the mini GenEval scorer and VQA accuracy."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from .errors import user_errors

app = typer.Typer(help="Score generated images and answers.", no_args_is_help=True)


@app.command()
@user_errors
def score(
    directory: Path = typer.Argument(..., help="Folder in GenEval's layout: DIR/00000/metadata.jsonl, samples/00000.png."),
    results: Path = typer.Option(None, help="Per-image results JSONL (default DIR/results.jsonl)."),
    as_json: bool = typer.Option(False, "--json", help="Print exactly one JSON object: overall, tags, images."),
):
    """Score ShapesWorld images by rule with GenEval's semantics; overall = mean of the tag means."""
    from ..evaluation.geneval.score import score_folder

    summary = score_folder(directory, results, progress=not as_json)
    if as_json:
        typer.echo(json.dumps(summary))
        return
    typer.echo(f"{'tag':<14} accuracy")
    for tag, value in summary["tags"].items():
        typer.echo(f"{tag:<14} {value:.4f}")
    typer.echo(f"{'overall':<14} {summary['overall']:.4f}   ({summary['images']} images)")


@app.command()
@user_errors
def vqa(
    predictions: Path = typer.Argument(..., help="JSONL rows with 'prediction' and 'answer' (and optional 'type')."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
):
    """VQA exact-match accuracy after normalisation."""
    from ..evaluation.vqa import vqa_accuracy

    if not predictions.is_file():
        raise FileNotFoundError(f"{predictions}: no such file")
    rows = []
    for line_no, line in enumerate(predictions.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            try:
                row = json.loads(line)
                rows.append((str(row["prediction"]), str(row["answer"]), str(row.get("type", "all"))))
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise ValueError(f"{predictions}:{line_no}: need a JSON object with 'prediction' and 'answer' ({err})")
    result = vqa_accuracy(*map(list, zip(*rows))) if rows else vqa_accuracy([], [])
    typer.echo(json.dumps(result) if as_json else f"accuracy {result['accuracy']:.4f} over {result['questions']}")


@app.command()
@user_errors
def reconstruct(
    model: str = typer.Option("mini", help="Saved pipeline folder, or a preset with shipped weights."),
    num: int = typer.Option(500, help="Held-out scenes to encode and decode."),
    steps: int = typer.Option(None, help="Decoder steps (default: the model's)."),
    guidance: float = typer.Option(None, help="Decoder guidance (default: the model's)."),
    batch_size: int = typer.Option(100, help="Scenes per batch."),
    seed: int = typer.Option(0, help="Held-out world seed."),
    as_json: bool = typer.Option(False, "--json", help="Print one object: fully_correct, count, colour, shape, position, scenes."),
):
    """Prove the autoencoder alone: held-out scenes -> 64 target tokens -> pixels, scored by rule."""
    from ..evaluation.reconstruct import SCORE_KEYS, reconstruct_heldout
    from ..inference.pipeline import BLIP3oPipeline

    if num < 1:
        raise ValueError("--num must be at least 1")
    pipe = BLIP3oPipeline.from_pretrained(model)
    decoder = pipe.config.decoder
    scores = reconstruct_heldout(pipe, num=num, batch_size=batch_size, seed=seed,
                                 num_inference_steps=steps or decoder.num_inference_steps,
                                 guidance_scale=decoder.guidance_scale if guidance is None else guidance)
    if as_json:
        typer.echo(json.dumps({k: scores[k] for k in (*SCORE_KEYS, "scenes")}))
    else:
        for key in SCORE_KEYS:
            typer.echo(f"{key:<14} {scores[key]:.4f}")
        typer.echo(f"{'scenes':<14} {scores['scenes']}")
