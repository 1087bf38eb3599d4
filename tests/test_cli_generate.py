"""`openblip3o generate | ask | serve | demo` from the command line: files written, answers printed, one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from openblip3o import BLIP3oPipeline
from openblip3o.cli import app
from openblip3o.inference.load import model_id_for
from openblip3o.utils.images import LABEL_LINE_HEIGHT, LABEL_PADDING

runner = CliRunner()
FAST = ["--steps", "2", "--decoder-steps", "2"]
PROMPTS = ["a photo of a red circle", "a photo of two stars"]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A saved mini pipeline (random weights): exercises `--model DIR` and loads faster than building one."""
    torch.manual_seed(0)
    pipe = BLIP3oPipeline.from_preset("mini")
    folder = tmp_path_factory.mktemp("model") / "my-mini"
    pipe.save_pretrained(folder)
    return pipe, folder


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_generate_writes_n_images_per_prompt_and_a_reproducible_grid(saved, tmp_path):
    _, model = saved
    result = invoke("generate", *PROMPTS, "--n", 2, "--seed", 3, *FAST, "--out", tmp_path / "out", "--model", model)
    assert result.exit_code == 0, result.output
    paths = result.stdout.split()
    assert len(paths) == 4 and [p.split("/")[-1] for p in paths[:2]] == ["000-a-photo-of-a-red-circle-0.png",
                                                                         "000-a-photo-of-a-red-circle-1.png"]
    images = [Image.open(p).convert("RGB") for p in paths]
    assert all(image.size == (64, 64) for image in images)
    result = invoke("generate", *PROMPTS, "--n", 2, "--seed", 3, *FAST, "--grid", "--out", tmp_path / "grid.png",
                    "--model", model)
    assert result.exit_code == 0, result.output
    assert result.stdout.split() == [str(tmp_path / "grid.png")]
    grid = Image.open(tmp_path / "grid.png").convert("RGB")
    tile, band = 128, LABEL_LINE_HEIGHT + 2 * LABEL_PADDING
    assert grid.size == (2 * tile, 2 * (band + tile))  # a row per prompt under its label, --n columns
    # Same seed, same images: the grid's bottom-right cell is the second prompt's second image (scaled 2x, nearest).
    cell = grid.crop((tile, 2 * band + tile, 2 * tile, 2 * (band + tile))).resize((64, 64), Image.NEAREST)
    assert np.abs(np.asarray(cell, dtype=int) - np.asarray(images[3], dtype=int)).max() <= 1
    # Each row's label band carries text (dark pixels); the image rows start below it.
    for row in range(2):
        label = np.asarray(grid.crop((0, row * (band + tile), 2 * tile, row * (band + tile) + band)), dtype=int)
        assert (label < 128).any(), f"row {row} has no prompt label"


def test_ask_prints_the_pipelines_answer(saved, tmp_path):
    pipe, model = saved
    image = Image.new("RGB", (64, 64))
    image.paste((255, 0, 0), (16, 16, 48, 48))
    image.save(tmp_path / "red.png")
    result = invoke("ask", tmp_path / "red.png", "what color is the square?", "--model", model)
    assert result.exit_code == 0, result.output
    assert model_id_for(model) == "my-mini" and model_id_for("mini") == "mini"  # the id `serve` publishes
    expected = pipe.answer([image], ["what color is the square?"])[0]
    assert result.stdout.splitlines() == [expected]


def test_default_model_is_the_shipped_mini_with_a_one_line_note(tmp_path):
    image = tmp_path / "black.png"
    Image.new("RGB", (64, 64)).save(image)
    result = invoke("ask", image, "how many shapes are there?")
    assert result.exit_code == 0, result.output
    assert len(result.stdout.splitlines()) == 1
    assert "Traceback" not in result.output and "warnings.warn" not in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["generate", "   "], "error: prompt is empty"),
        (["generate", "a star", "--n", "0"], "error: --n must be between 1 and 64"),
        (["generate", "a star", "--steps", "0"], "error: --steps must be between 1 and 200"),
        (["generate", "a star", "--model", "{tmp}/missing"], "no such folder and no such preset"),
        (["ask", "{tmp}/missing.png", "what?"], "no such image file"),
        (["ask", "{tmp}/notes.txt", "what?"], "could not be decoded"),
        (["ask", "{tmp}/notes.txt", "  "], "error: question is empty"),
        (["serve", "--port", "0"], "error: --port must be between 1 and 65535"),
        (["serve", "--max-batch", "0"], "error: --max-batch must be at least 1"),
        (["demo", "--model", "{tmp}/missing"], "no such folder and no such preset"),
    ],
)
def test_user_mistakes_exit_2_with_one_line(tmp_path, args, message):
    (tmp_path / "notes.txt").write_text("not an image")
    result = invoke(*[a.format(tmp=tmp_path) for a in args])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if not line.startswith("seed ")]
    assert len(lines) == 1 and message in lines[0], result.output


@pytest.mark.parametrize("command", ["generate", "ask", "serve", "demo"])
def test_help(command):
    result = invoke(command, "--help")
    assert result.exit_code == 0 and "Usage" in result.output and "--model" in result.output


def test_grid_labels_wrap_long_prompts_instead_of_cutting_their_last_word():
    from PIL import Image

    from openblip3o.utils.images import prompt_rows

    tile = [Image.new("RGB", (64, 64))]
    short = prompt_rows(tile, ["a red circle"], columns=1)
    long = prompt_rows(tile, ["a photo of two red circles above a large blue square"], columns=1)
    assert long.size[1] > short.size[1]  # more label lines: the whole prompt is written
