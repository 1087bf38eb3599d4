"""The `openblip3o` command: the README's main job end to end, JSON contracts, one-line user errors."""

import json
import subprocess
import sys

from typer.testing import CliRunner

from openblip3o.cli import app

runner = CliRunner()


def test_main_job_prompts_render_score(tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    result = runner.invoke(app, ["data", "prompts", "--out", str(prompts), "--split", "heldout"])
    assert result.exit_code == 0, result.output
    assert len(prompts.read_text().splitlines()) == 553
    # A slice keeps the test fast; the full set is scored in test_scorer.
    small = tmp_path / "small.jsonl"
    small.write_text("".join(prompts.read_text().splitlines(keepends=True)[::20]))
    result = runner.invoke(app, ["data", "render", "--metadata", str(small), "--out", str(tmp_path / "gt"), "--n-samples", "2"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "gt" / "00000" / "samples" / "00001.png").is_file()
    result = runner.invoke(app, ["eval", "score", str(tmp_path / "gt"), "--json"])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert len(lines) == 1
    summary = json.loads(lines[0])
    assert set(summary) == {"overall", "tags", "images"}
    assert summary["images"] == 2 * len(small.read_text().splitlines()) and summary["overall"] >= 0.99


def test_user_errors_are_one_line_with_nonzero_exit(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"tag": "single_object", "include": [{"class": "circle", "count": 1}]}\n{"tag": \n')
    result = runner.invoke(app, ["data", "render", "--metadata", str(bad), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [f"error: {bad}:2: malformed JSON (Expecting value)"]
    result = runner.invoke(app, ["eval", "score", str(tmp_path / "missing")])
    assert result.exit_code == 2 and "no such directory" in result.output and "Traceback" not in result.output


def test_vqa_command(tmp_path):
    rows = [{"prediction": "Two.", "answer": "two", "type": "count"}, {"prediction": "red", "answer": "blue"}]
    path = tmp_path / "pred.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = runner.invoke(app, ["eval", "vqa", str(path), "--json"])
    assert result.exit_code == 0
    assert json.loads(result.stdout) == {"accuracy": 0.5, "by_type": {"all": 0.0, "count": 1.0}, "questions": 2}


def test_python_dash_m_and_help_on_every_command():
    for args in ([], ["data"], ["data", "shapes"], ["data", "prompts"], ["data", "render"], ["eval", "score"], ["eval", "vqa"]):
        out = subprocess.run([sys.executable, "-m", "openblip3o", *args, "--help"], capture_output=True, text=True)
        assert out.returncode == 0 and "Usage" in out.stdout, (args, out.stderr)
