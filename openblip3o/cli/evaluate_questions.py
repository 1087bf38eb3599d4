"""`openblip3o eval vqa-heldout` and `eval mirror`: questions asked about ShapesWorld scenes the model never saw."""

from __future__ import annotations

import json

import typer

from .errors import user_errors
from .loading import load_for_command

MODEL_OPT = typer.Option("mini", "--model",
                         help="A folder written by save_pretrained, or 'mini' (the shipped default).")
BATCH_OPT = typer.Option(64, "--batch-size", help="Questions per batch.")


def _check_scenes(num: int, split: str) -> None:
    """The checks of the commands that ask questions about `num` ShapesWorld scenes of `split`."""
    if num < 1:
        raise ValueError("--num must be at least 1")
    if split not in ("heldout", "eval"):
        raise ValueError(f"--split must be heldout or eval, got {split!r}")


@user_errors
def vqa_heldout_command(
    model: str = MODEL_OPT,
    num: int = typer.Option(500, "--num", help="Held-out scenes (each brings up to five questions)."),
    seed: int = typer.Option(0, "--seed", help="Held-out world seed."),
    batch_size: int = BATCH_OPT,
    split: str = typer.Option("heldout", "--split", help="heldout (compositions never trained on) or eval (unseen "
                              "scenes of seen compositions: whether the model does its job at all)."),
    lookup: bool = typer.Option(False, "--lookup", help="Also colour and shape questions whose answer another "
                                "object would change: accuracy, and the share answered with the other object's; and "
                                "'how many <shape>s?' split by whether the scene holds the shape."),
    as_json: bool = typer.Option(False, "--json", help="Print one object: accuracy, by_type, questions (and with "
                                 "--lookup: lookup {type: {accuracy, other_object, questions}}, named_count {present, "
                                 "absent: {accuracy, questions}})."),
):
    """Mini VQA accuracy on held-out ShapesWorld scenes, by question type."""
    from ..evaluation.vqa import vqa_heldout

    _check_scenes(num, split)
    result = vqa_heldout(load_for_command(model).pipe, num=num, seed=seed, batch_size=batch_size, split=split,
                         lookup=lookup)
    if as_json:
        typer.echo(json.dumps(result))
        return
    for kind, value in result["by_type"].items():
        typer.echo(f"{kind:<10} {value:.4f}")
    for kind, value in result.get("lookup", {}).items():
        typer.echo(f"{kind:<10} lookup {value['accuracy']:.4f}, the other object's answer {value['other_object']:.4f}"
                   f" ({value['questions']} questions)")
    for side, value in result.get("named_count", {}).items():
        typer.echo(f"{'count':<10} of a shape {side:<7} {value['accuracy']:.4f} ({value['questions']} questions)")
    typer.echo(f"{'accuracy':<10} {result['accuracy']:.4f}   ({result['questions']} questions)")


@user_errors
def mirror(
    model: str = MODEL_OPT,
    num: int = typer.Option(200, "--num", help="Scenes whose relation questions are asked."),
    seed: int = typer.Option(0, "--seed", help="World seed."),
    batch_size: int = BATCH_OPT,
    split: str = typer.Option("heldout", "--split", help="heldout or eval."),
    as_json: bool = typer.Option(False, "--json", help="Print one object: accuracy, mirrored_accuracy, "
                                 "answer_changed, yes_share, questions."),
):
    """Does the backbone read where objects lie? Relation questions asked of each image and of its mirror: a reader
    of positions changes its answer, a word prior does not."""
    from ..evaluation.relation_mirror import relation_mirror

    _check_scenes(num, split)
    result = relation_mirror(load_for_command(model).pipe, num=num, seed=seed, batch_size=batch_size, split=split)
    if as_json:
        typer.echo(json.dumps(result))
        return
    for key in ("accuracy", "mirrored_accuracy", "answer_changed", "yes_share"):
        typer.echo(f"{key:<18} {result[key]:.4f}")
    typer.echo(f"{'questions':<18} {result['questions']}")
