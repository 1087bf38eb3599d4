"""Contact sheets: images in a grid with a wrapped text label under each."""

from __future__ import annotations

import textwrap

from PIL import Image, ImageDraw, ImageFont

LABEL_LINE_HEIGHT = 12
LABEL_PADDING = 4
CHARS_PER_PIXEL = 1 / 6  # the default bitmap font is about 6 px per character


def contact_sheet(images: list[Image.Image], labels: list[str] | None = None, columns: int = 4,
                  tile: int = 192, label_lines: int = 4) -> Image.Image:
    """A white sheet of `columns` tiles per row; images are scaled to `tile` px with nearest-neighbour."""
    if not images:
        raise ValueError("no images for the contact sheet")
    labels = labels or [""] * len(images)
    font = ImageFont.load_default()
    label_height = LABEL_LINE_HEIGHT * label_lines if any(labels) else 0
    cell_w, cell_h = tile + 2 * LABEL_PADDING, tile + label_height + 2 * LABEL_PADDING
    rows = (len(images) + columns - 1) // columns
    sheet = Image.new("RGB", (columns * cell_w, rows * cell_h), "white")
    draw = ImageDraw.Draw(sheet)
    width_chars = max(8, int(tile * CHARS_PER_PIXEL))
    for i, (image, label) in enumerate(zip(images, labels)):
        x, y = (i % columns) * cell_w + LABEL_PADDING, (i // columns) * cell_h + LABEL_PADDING
        sheet.paste(image.convert("RGB").resize((tile, tile), Image.NEAREST), (x, y))
        for j, line in enumerate(textwrap.wrap(label, width_chars)[:label_lines]):
            draw.text((x, y + tile + 2 + j * LABEL_LINE_HEIGHT), line, fill="black", font=font)
    return sheet


def to_pil(images) -> list[Image.Image]:
    """(B, 3, H, W) tensor in [0, 1] -> B RGB PIL images (rounded to 8 bits)."""
    import torch

    array = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a) for a in array]


def prompt_rows(images: list[Image.Image], prompts: list[str], columns: int, tile: int = 128) -> Image.Image:
    """One row per prompt (its `columns` images, scaled to `tile` px), the prompt written above its row (wrapped).

    images: len(prompts) * columns images, row by row. A user must see which prompt drew which row, so each row is
    diffusers' `make_image_grid` of its images under a band with the prompt.
    """
    from diffusers.utils import make_image_grid

    if len(images) != len(prompts) * columns:
        raise ValueError(f"{len(images)} images for {len(prompts)} prompts x {columns} columns")
    font = ImageFont.load_default()
    width = max(columns * tile, 1)
    # Wrapped, not shortened: prompts that differ in their last word must show that word.
    labels = [textwrap.wrap(prompt, max(int(width * CHARS_PER_PIXEL), 1)) or [""] for prompt in prompts]
    band = max(len(lines) for lines in labels) * LABEL_LINE_HEIGHT + 2 * LABEL_PADDING
    sheet = Image.new("RGB", (width, len(prompts) * (band + tile)), "white")
    draw = ImageDraw.Draw(sheet)
    # Nearest-neighbour: small generated images stay sharp (make_image_grid's own resize would smooth them).
    scaled = [image.convert("RGB").resize((tile, tile), Image.NEAREST) for image in images]
    for row, lines in enumerate(labels):
        top = row * (band + tile)
        for index, line in enumerate(lines):
            draw.text((LABEL_PADDING, top + LABEL_PADDING + index * LABEL_LINE_HEIGHT), line, fill="black", font=font)
        sheet.paste(make_image_grid(scaled[row * columns : (row + 1) * columns], 1, columns), (0, top + band))
    return sheet
