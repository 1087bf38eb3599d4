"""`eval failures`: each failed image's first mistake, from the reasons `evaluate` writes; the conditional scores."""

import json

import pytest
from typer.testing import CliRunner

from openblip3o.cli import app
from openblip3o.data.shapes.rules import Detection, evaluate, failure_kinds, first_failure
from openblip3o.evaluation.geneval.failures import failure_breakdown

SQUARE, HIGH, LOW = (20, 40, 30, 50), (20, 0, 30, 10), (20, 52, 30, 62)
POSITION = {"tag": "position",
            "include": [{"class": "square", "count": 1}, {"class": "circle", "count": 1, "position": ["above", 0]}]}
COLOR_ATTR = {"tag": "color_attr",
              "include": [{"class": "circle", "count": 1, "color": "red"},
                          {"class": "star", "count": 1, "color": "blue"}]}
COUNTING = {"tag": "counting", "include": [{"class": "star", "count": 2}], "exclude": [{"class": "star", "count": 3}]}


def _det(shape, color, box):
    return Detection(shape=shape, color=color, box=box, confidence=1.0)


def _row(metadata, detections):
    correct, reason = evaluate(metadata, detections)
    return {"tag": metadata["tag"], "correct": correct, "reason": reason}


def test_failure_kinds_read_every_reason_evaluate_writes():
    stars = [_det("star", "red", (i * 10, 0, i * 10 + 8, 8)) for i in range(3)]
    assert failure_kinds(_row(COUNTING, stars[:2])["reason"]) == set()
    assert failure_kinds(_row(COUNTING, stars)["reason"]) == {"extra"}
    assert failure_kinds(_row(COUNTING, stars[:1])["reason"]) == {"missing"}
    wrong_side = _row(POSITION, [_det("square", "red", SQUARE), _det("circle", "red", LOW)])
    assert failure_kinds(wrong_side["reason"]) == {"relation"}
    no_square = _row(POSITION, [_det("circle", "red", HIGH)])  # "missing" then "no target": the second adds nothing
    assert failure_kinds(no_square["reason"]) == {"missing"}
    swapped = _row(COLOR_ATTR, [_det("circle", "blue", SQUARE), _det("star", "red", HIGH)])
    assert failure_kinds(swapped["reason"]) == {"colour"}
    assert first_failure(_row(COLOR_ATTR, [_det("circle", "blue", SQUARE)])["reason"]) == "missing"
    assert failure_kinds("cannot identify image file") == {"unreadable"}


def test_breakdown_shares_and_a_relation_blind_generator_at_one_half():
    right = [_det("square", "red", SQUARE), _det("circle", "red", HIGH)]
    wrong = [_det("square", "red", SQUARE), _det("circle", "red", LOW)]
    no_square = _row(POSITION, [_det("circle", "red", HIGH)])
    rows = [_row(POSITION, right)] * 3 + [_row(POSITION, wrong)] * 3 + [no_square] * 2
    rows += [_row(COLOR_ATTR, [_det("circle", "red", SQUARE), _det("star", "blue", HIGH)]),
             _row(COLOR_ATTR, [_det("circle", "blue", SQUARE), _det("star", "red", HIGH)]),
             _row(COLOR_ATTR, [_det("circle", "blue", SQUARE), _det("star", "red", HIGH)]),
             {"tag": "color_attr", "correct": False, "reason": "cannot identify image file"}]
    result = failure_breakdown(rows)
    position = result["tags"]["position"]
    assert position["images"] == 8
    assert position["correct"] == pytest.approx(3 / 8) and position["relation"] == pytest.approx(3 / 8)
    assert position["missing"] == pytest.approx(2 / 8) and position["colour"] == 0
    # Once both objects are drawn, a generator that ignores the relation word gets one side in two.
    assert result["when_drawn"]["position"] == {"kind": "relation", "accuracy": pytest.approx(0.5), "images": 6}
    attr = result["tags"]["color_attr"]
    assert attr["colour"] == pytest.approx(0.5) and attr["unreadable"] == pytest.approx(0.25)
    assert result["when_drawn"]["color_attr"]["accuracy"] == pytest.approx(1 / 3)
    assert all(sum(v for k, v in t.items() if k != "images") == pytest.approx(1.0) for t in result["tags"].values())
    assert "colors" not in result["when_drawn"] and result["images"] == 12


def test_failures_command_json_and_clear_errors(tmp_path):
    runner = CliRunner()
    rows = [_row(POSITION, [_det("square", "red", SQUARE), _det("circle", "red", LOW)]),
            _row(POSITION, [_det("square", "red", SQUARE), _det("circle", "red", HIGH)])]
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r | {"filename": "x.png"}) + "\n" for r in rows))
    result = runner.invoke(app, ["eval", "failures", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert len(lines) == 1
    summary = json.loads(lines[0])
    assert set(summary) == {"tags", "when_drawn", "images"}
    assert summary["when_drawn"]["position"]["accuracy"] == 0.5
    result = runner.invoke(app, ["eval", "failures", str(tmp_path / "missing")])
    assert result.exit_code == 2 and "score the folder first" in result.output
    (tmp_path / "results.jsonl").write_text('{"tag": "position"}\n')
    result = runner.invoke(app, ["eval", "failures", str(tmp_path)])
    assert result.exit_code == 2 and "results.jsonl:1:" in result.output
