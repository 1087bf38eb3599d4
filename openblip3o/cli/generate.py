"""`openblip3o generate` and `openblip3o ask`: text to images, and a question about an image, from the shell."""

from __future__ import annotations

import re
import secrets
from pathlib import Path

import typer

from .errors import user_errors

DEFAULT_OUT = Path("outputs")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
SLUG_CHARS = 40  # file names keep the start of the prompt, readable in a file browser
SEED_BITS = 31
GRID_NAME = "grid.png"
MODEL_HELP = "A folder written by save_pretrained, or 'mini' (the shipped default)."


def _load(model: str):
    """The pipeline, with load-time warnings shown as one 'note:' line each on stderr."""
    from ..serving.model import load_model

    loaded = load_model(model)
    for note in loaded.notes:
        typer.secho(f"note: {note}", err=True, fg=typer.colors.YELLOW)
    return loaded.pipe


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:SLUG_CHARS].rstrip("-") or "image"


def output_paths(out: Path, prompts: list[str], n: int, grid: bool) -> list[Path]:
    """Where the images go. A path with an image suffix names one file (the grid, or the only image; several images
    get `-000`, `-001`, ... before the suffix); anything else is a folder of `PPP-slug-K.png` files."""
    if out.suffix.lower() in IMAGE_SUFFIXES:
        if grid or len(prompts) * n == 1:
            return [out]
        return [out.with_name(f"{out.stem}-{i:03d}{out.suffix}") for i in range(len(prompts) * n)]
    if grid:
        return [out / GRID_NAME]
    return [out / f"{p:03d}-{_slug(prompt)}-{k}.png" for p, prompt in enumerate(prompts) for k in range(n)]


@user_errors
def generate(
    prompts: list[str] = typer.Argument(..., help="One or more prompts (quote each one)."),
    n: int = typer.Option(4, "--n", help="Images per prompt."),
    seed: int = typer.Option(None, help="Image k of prompt p gets seed SEED + p*N + k (default: a random SEED, printed)."),
    steps: int = typer.Option(None, help="DiT sampling steps (default: the model's)."),
    cfg: float = typer.Option(None, help="DiT classifier-free guidance scale (default: the model's)."),
    decoder_steps: int = typer.Option(None, help="Diffusion decoder steps (default: the model's)."),
    decoder_cfg: float = typer.Option(None, help="Diffusion decoder guidance scale (default: the model's)."),
    out: Path = typer.Option(DEFAULT_OUT, help="A folder, or an image file path (for --grid or a single image)."),
    grid: bool = typer.Option(False, "--grid", help="Save one grid image: a row per prompt, N columns."),
    model: str = typer.Option("mini", help=MODEL_HELP),
):
    """Generate N images for each PROMPT and save them as PNG files (paths printed, one per line)."""
    import torch

    from ..serving.limits import MAX_PROMPT_CHARS, RequestError, check_text

    if n < 1:
        raise ValueError("--n must be at least 1")
    for name, value in (("--steps", steps), ("--decoder-steps", decoder_steps)):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be at least 1")
    for name, value in (("--cfg", cfg), ("--decoder-cfg", decoder_cfg)):
        if value is not None and value < 0:
            raise ValueError(f"{name} must be non-negative")
    try:
        prompts = [check_text(p, MAX_PROMPT_CHARS, "PROMPT", "prompt") for p in prompts]
    except RequestError as err:
        raise ValueError(err.message) from None
    if out.exists() and out.is_dir() == (out.suffix.lower() in IMAGE_SUFFIXES):
        raise ValueError(f"--out {out}: exists as a {'folder' if out.is_dir() else 'file'}")
    if seed is None:
        seed = secrets.randbits(SEED_BITS)
        typer.echo(f"seed {seed}", err=True)
    paths = output_paths(out, prompts, n, grid)
    pipe = _load(model)
    images = pipe(prompt=prompts, num_images_per_prompt=n, num_inference_steps=steps, guidance_scale=cfg,
                  decoder_num_inference_steps=decoder_steps, decoder_guidance_scale=decoder_cfg,
                  generator=[torch.Generator().manual_seed(seed + i) for i in range(len(prompts) * n)],
                  output_type="pil", progress=True).images
    if grid:
        from ..utils.images import prompt_rows

        images = [prompt_rows(images, prompts, n)]  # each row's prompt above it
    for path, image in zip(paths, images):
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path)
        typer.echo(str(path))


@user_errors
def ask(
    image: Path = typer.Argument(..., help="An image file (PNG, JPEG, ...)."),
    question: str = typer.Argument(..., help="The question, e.g. 'how many stars are there?'."),
    max_new_tokens: int = typer.Option(8, help="Longest answer, in tokens."),
    model: str = typer.Option("mini", help=MODEL_HELP),
):
    """Answer a QUESTION about an IMAGE (printed on one line)."""
    from ..serving.limits import MAX_NEW_TOKENS, MAX_QUESTION_CHARS, RequestError, check_text, load_image_file

    if not 1 <= max_new_tokens <= MAX_NEW_TOKENS:
        raise ValueError(f"--max-new-tokens must be between 1 and {MAX_NEW_TOKENS}")
    try:
        question = check_text(question, MAX_QUESTION_CHARS, "QUESTION", "question")
    except RequestError as err:
        raise ValueError(err.message) from None
    picture = load_image_file(image)
    pipe = _load(model)
    typer.echo(pipe.answer(images=[picture], questions=[question], max_new_tokens=max_new_tokens)[0])
