"""`openblip3o convert --from-official DIR --out DIR`: the official BLIP3-o checkpoint as a BLIP3oPipeline folder."""

from __future__ import annotations

from pathlib import Path

import typer

from .errors import user_errors

FULL_PRESETS = ("blip3o-8b", "blip3o-4b")


@user_errors
def convert(
    from_official: Path = typer.Option(..., "--from-official", help="Official checkpoint folder (BLIP3o-Model-8B/4B)."),
    out: Path = typer.Option(..., "--out", help="Folder to write (BLIP3oPipeline.from_pretrained reads it)."),
    preset: str = typer.Option("blip3o-8b", help="Architecture of the checkpoint: blip3o-8b or blip3o-4b."),
    config: Path = typer.Option(None, help="YAML overrides of the preset (unknown keys are errors)."),
    eva_clip: Path = typer.Option(None, "--eva-clip", help="EVA-CLIP weights for the target encoder (training only)."),
):
    """Map the official weights (Qwen2.5-VL, latent queries, DiT, diffusion-decoder/) onto our layout, strictly."""
    from ..config import load_yaml_overrides
    from ..convert import convert_official
    from ..presets import get_preset

    if preset not in FULL_PRESETS:
        raise ValueError(f"--preset: {preset!r} is not one of {', '.join(FULL_PRESETS)}")
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"--out: {out} exists and is not empty")
    model_config = get_preset(preset)
    if config is not None:
        model_config = load_yaml_overrides(model_config, config)
    convert_official(from_official, out, model_config, eva_clip=eva_clip)
    typer.echo(f"wrote {out} (load it with BLIP3oPipeline.from_pretrained)")
