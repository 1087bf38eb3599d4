"""The CLI under a user's mistakes (issue 18): bad text, bad paths and out-of-range sizes end in one `error:` line and
exit code 2, found before any model is loaded or any image generated.

Most cases pass `--model` a folder that does not exist: a check that runs before any work reports its own mistake; one
that ran only after loading (or generating) would report the missing model instead.
"""

from __future__ import annotations

import pytest
from PIL import Image
from typer.testing import CliRunner

from openblip3o.cli import app
from openblip3o.cli.generate import MAX_IMAGES, MAX_N
from openblip3o.serving.limits import MAX_GUIDANCE, MAX_STEPS

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def one_error_line(result, *fragments: str) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if not line.startswith("seed ")]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for fragment in fragments:
        assert fragment in lines[0], result.output
    return lines[0]


@pytest.fixture()
def missing_model(tmp_path):
    return tmp_path / "no-model-here"


def test_generate_with_undecodable_bytes_in_the_prompt(missing_model):
    # The shell's $'a red circle \xff' reaches Python (surrogateescape) as a lone surrogate.
    line = one_error_line(invoke("generate", "a red circle \udcff", "--model", missing_model), "not valid Unicode")
    assert "\\udcff" in line


def test_ask_with_undecodable_bytes_in_the_question(tmp_path, missing_model):
    Image.new("RGB", (8, 8)).save(tmp_path / "black.png")
    one_error_line(invoke("ask", tmp_path / "black.png", "what \ud800?", "--model", missing_model), "not valid Unicode")


def test_ask_on_a_non_image_names_no_python_object(tmp_path):
    (tmp_path / "notes.txt").write_text("not an image")
    line = one_error_line(invoke("ask", tmp_path / "notes.txt", "what?"), "could not be decoded")
    assert "BytesIO" not in line and "object at 0x" not in line


@pytest.mark.parametrize(("args", "fragments"), [
    (["--n", "100000"], [f"--n must be between 1 and {MAX_N}", "100000"]),
    (["--n", str(MAX_N), *[f"prompt {i}" for i in range(MAX_IMAGES // MAX_N + 1)]], [f"the limit is {MAX_IMAGES}"]),
    (["--steps", "100000"], [f"--steps must be between 1 and {MAX_STEPS}"]),
    (["--decoder-steps", "0"], [f"--decoder-steps must be between 1 and {MAX_STEPS}"]),
    (["--cfg", "1e9"], [f"--cfg must be between 0 and {MAX_GUIDANCE}"]),
], ids=["n", "total", "steps", "decoder-steps", "cfg"])
def test_generate_limits_are_named_before_any_work(missing_model, args, fragments):
    one_error_line(invoke("generate", "a star", *args, "--model", missing_model), *fragments)


@pytest.mark.parametrize("out", ["afile/img.png", "afile/folder", "afile/deeper/img.png"])
def test_generate_out_under_a_file_is_refused_before_any_work(tmp_path, missing_model, out):
    (tmp_path / "afile").write_text("a file, not a folder")
    one_error_line(invoke("generate", "a star", "--n", "1", "--out", tmp_path / out, "--model", missing_model),
                   "--out", "cannot write")


def test_generate_out_in_an_unwritable_folder_is_refused_before_any_work(missing_model):
    # /sys refuses new files even to root (tests here may run as root, for whom permission bits mean nothing)
    one_error_line(invoke("generate", "a star", "--n", "1", "--out", "/sys/img.png", "--model", missing_model),
                   "--out", "cannot write in /sys")


def test_generate_out_naming_a_folder_as_the_grid_file_is_refused(tmp_path, missing_model):
    (tmp_path / "grid.png").mkdir()
    one_error_line(invoke("generate", "a star", "--grid", "--out", tmp_path, "--model", missing_model),
                   "is a folder, not a file name")


def test_data_shapes_out_is_a_file(tmp_path):
    (tmp_path / "afile").write_text("x")
    one_error_line(invoke("data", "shapes", "--out", tmp_path / "afile", "--num", "2", "--workers", "1"))


HELP_COMMANDS = ([], ["train"], ["generate"], ["serve"], ["study"], ["eval", "geneval"], ["data", "shapes"])


@pytest.mark.parametrize("command", HELP_COMMANDS, ids=lambda c: " ".join(c) or "top")
def test_help_imports_no_torch(command):
    """`--help` answers at once: importing torch (seconds, and it may be absent) waits until a command needs it."""
    import subprocess
    import sys

    probe = ("import sys\nfrom openblip3o.cli.main import app\ntry:\n    app(sys.argv[1:] + ['--help'])\n"
             "except SystemExit:\n    pass\nprint('torch' in sys.modules, file=sys.stderr)")
    out = subprocess.run([sys.executable, "-c", probe, *command], capture_output=True, text=True, timeout=60)
    assert "Usage" in out.stdout, out.stderr
    assert out.stderr.strip().splitlines()[-1] == "False", out.stderr


@pytest.fixture(scope="module")
def damaged_backbone(tmp_path_factory):
    """A saved tiny pipeline whose backbone folder lost its queries file (an interrupted copy)."""
    import torch
    from tiny import tiny_config

    from openblip3o import BLIP3oPipeline
    from openblip3o.models.backbone import QUERIES_FILE

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("damaged") / "pipe"
    BLIP3oPipeline.from_preset("tiny", tiny_config()).save_pretrained(folder)
    (folder / "backbone" / QUERIES_FILE).unlink()
    return folder


@pytest.mark.parametrize("command", [("generate", "a red circle"), ("ask", "IMAGE", "what color?")])
def test_a_damaged_backbone_folder_is_one_line(damaged_backbone, tmp_path, command):
    from openblip3o.models.backbone import QUERIES_FILE

    image = tmp_path / "in.png"
    Image.new("RGB", (64, 64)).save(image)
    args = [str(image) if a == "IMAGE" else a for a in command]
    line = one_error_line(invoke(*args, "--model", damaged_backbone, "--out", tmp_path / "o") if command[0] == "generate"
                          else invoke(*args, "--model", damaged_backbone), QUERIES_FILE)
    assert "backbone" in line
