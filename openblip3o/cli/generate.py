"""`openblip3o generate` and `openblip3o ask`: text to images, and a question about an image, from the shell."""

from __future__ import annotations

import re
import secrets
import tempfile
from pathlib import Path

import typer

from .errors import user_errors
from .loading import load_for_command

DEFAULT_OUT = Path("outputs")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
SLUG_CHARS = 40  # file names keep the start of the prompt, readable in a file browser
SEED_BITS = 31
GRID_NAME = "grid.png"
MODEL_HELP = "A folder written by save_pretrained, or 'mini' (the shipped default)."
MAX_N = 64  # images per prompt
MAX_IMAGES = 512  # images per command: a larger job is a loop over commands (or `openblip3o eval geneval`)
CHUNK = 16  # images per pipeline call: memory stays bounded however many images are asked for


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


def _user_text(texts: list[str], limit: int, what: str) -> list[str]:
    """Each text checked as the server checks it (non-empty, within `limit`, valid Unicode), or a ValueError."""
    from ..serving.limits import RequestError, check_text

    try:
        return [check_text(text, limit, what.upper(), what) for text in texts]
    except RequestError as err:
        raise ValueError(err.message) from None


def check_writable(paths: list[Path], out: Path) -> None:
    """Make the folders `paths` go in and prove each writable, before any work: a mistake found after minutes of
    generation would throw the images away."""
    for path in paths:
        if path.is_dir():
            raise ValueError(f"--out {out}: {path} is a folder, not a file name")
    for folder in dict.fromkeys(path.parent for path in paths):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=folder):
                pass
        except OSError as err:
            raise ValueError(f"--out {out}: cannot write in {folder} ({err.strerror or type(err).__name__})") from None


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
    from ..serving.limits import MAX_GUIDANCE, MAX_PROMPT_CHARS, MAX_STEPS

    if not 1 <= n <= MAX_N:
        raise ValueError(f"--n must be between 1 and {MAX_N}, got {n}")
    if len(prompts) * n > MAX_IMAGES:
        raise ValueError(f"{len(prompts)} prompts x --n {n} = {len(prompts) * n} images; the limit is {MAX_IMAGES} "
                         "per command")
    for name, value in (("--steps", steps), ("--decoder-steps", decoder_steps)):
        if value is not None and not 1 <= value <= MAX_STEPS:
            raise ValueError(f"{name} must be between 1 and {MAX_STEPS}, got {value}")
    for name, value in (("--cfg", cfg), ("--decoder-cfg", decoder_cfg)):
        if value is not None and not 0 <= value <= MAX_GUIDANCE:
            raise ValueError(f"{name} must be between 0 and {MAX_GUIDANCE}, got {value}")
    prompts = _user_text(prompts, MAX_PROMPT_CHARS, "prompt")
    if out.exists() and out.is_dir() == (out.suffix.lower() in IMAGE_SUFFIXES):
        raise ValueError(f"--out {out}: exists as a {'folder' if out.is_dir() else 'file'}")
    paths = output_paths(out, prompts, n, grid)
    check_writable(paths, out)
    if seed is None:
        seed = secrets.randbits(SEED_BITS)
        typer.echo(f"seed {seed}", err=True)
    pipe = load_for_command(model).pipe
    import torch

    # Image i (prompt i // n) has seed SEED + i whichever chunk makes it: chunking changes no image (batch == alone).
    jobs = [(prompt, seed + i) for i, prompt in enumerate(p for p in prompts for _ in range(n))]
    images, saved = [], iter(paths)
    for start in range(0, len(jobs), CHUNK):
        chunk = jobs[start : start + CHUNK]
        made = pipe(prompt=[p for p, _ in chunk], num_images_per_prompt=1, num_inference_steps=steps,
                    guidance_scale=cfg, decoder_num_inference_steps=decoder_steps, decoder_guidance_scale=decoder_cfg,
                    generator=[torch.Generator().manual_seed(s) for _, s in chunk], output_type="pil",
                    progress=True).images
        if grid:
            images.extend(made)  # the grid needs them all; 64 px each
        else:
            for image in made:
                _save(image, next(saved))
    if grid:
        from ..utils.images import prompt_rows

        _save(prompt_rows(images, prompts, n), paths[0])  # each row's prompt above it


def _save(image, path: Path) -> None:
    try:
        image.save(path)
    except OSError as err:  # e.g. the disk filled up
        raise ValueError(f"could not write {path} ({err.strerror or err})") from None
    typer.echo(str(path))


@user_errors
def ask(
    image: Path = typer.Argument(..., help="An image file (PNG, JPEG, ...)."),
    question: str = typer.Argument(..., help="The question, e.g. 'how many stars are there?'."),
    max_new_tokens: int = typer.Option(8, help="Longest answer, in tokens."),
    model: str = typer.Option("mini", help=MODEL_HELP),
):
    """Answer a QUESTION about an IMAGE (printed on one line)."""
    from ..serving.limits import MAX_NEW_TOKENS, MAX_QUESTION_CHARS, load_image_file

    if not 1 <= max_new_tokens <= MAX_NEW_TOKENS:
        raise ValueError(f"--max-new-tokens must be between 1 and {MAX_NEW_TOKENS}")
    (question,) = _user_text([question], MAX_QUESTION_CHARS, "question")
    picture = load_image_file(image)
    pipe = load_for_command(model).pipe
    typer.echo(pipe.answer(images=[picture], questions=[question], max_new_tokens=max_new_tokens)[0])
