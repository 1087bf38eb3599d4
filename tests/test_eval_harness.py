"""Benchmark harnesses: GenEval generation, DPG-Bench (official layout + mini rule scoring), WISE (layout + judge
against a local stub), the lmms-eval adapter on hand-built requests, and held-out VQA."""

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from diffusers.utils import make_image_grid
from PIL import Image
from typer.testing import CliRunner

from openblip3o.cli import app
from openblip3o.data.shapes import evaluation_set, render_scene
from openblip3o.evaluation import dpg, wise
from openblip3o.evaluation.lmms_adapter import OpenBLIP3oLMM
from openblip3o.inference.pipeline import BLIP3oPipeline
from tiny import tiny_config

runner = CliRunner()
FAST = ["--steps", "1", "--decoder-steps", "1"]
STUB_ANSWER = "**Consistency**: 2\nRealism: 1\nAesthetic Quality：2"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny") / "pipe"
    BLIP3oPipeline.from_preset("mini", tiny_config()).save_pretrained(folder)
    return folder


def _json_line(result) -> dict:
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.splitlines() if line.strip().startswith("{")]
    assert len(lines) == 1, result.stdout
    return json.loads(lines[0])


# --- GenEval ----------------------------------------------------------------------------------------------------
def test_geneval_command_writes_official_layout_resumably(tmp_path, tiny_dir):
    meta = tmp_path / "meta.jsonl"
    meta.write_text("".join(json.dumps(r) + "\n" for r in evaluation_set("heldout")[::200]))
    out = tmp_path / "gen"
    args = ["eval", "geneval", "--metadata", str(meta), "--out", str(out), "--n-samples", "2", "--model", str(tiny_dir),
            "--seed", "3", "--cfg", "2.0", *FAST]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    sample = out / "00002" / "samples" / "00001.png"
    assert sample.is_file() and (out / "00000" / "grid.png").is_file()
    settings = json.loads((out / "settings.json").read_text())
    assert settings["seed"] == 3 and settings["guidance_scale"] == 2.0 and settings["num_inference_steps"] == 1
    assert len(settings["model_hash"]) == 16 and "commit" in settings
    stamp = sample.stat().st_mtime_ns
    assert runner.invoke(app, args).exit_code == 0
    assert sample.stat().st_mtime_ns == stamp  # resumed: nothing regenerated
    summary = _json_line(runner.invoke(app, ["eval", "score", str(out), "--json"]))
    assert summary["images"] == 6


def test_geneval_seed_schemes_share_or_separate_noise_and_refuse_mixed_resume(tmp_path, tiny_dir):
    record = evaluation_set("heldout")[0]
    meta = tmp_path / "meta.jsonl"
    meta.write_text(json.dumps(record) + "\n" + json.dumps(record) + "\n")  # the same prompt twice
    base = ["eval", "geneval", "--metadata", str(meta), "--n-samples", "1", "--model", str(tiny_dir), "--no-grid",
            *FAST]

    def first_samples(out, *extra):
        result = runner.invoke(app, [*base, "--out", str(out), *extra])
        assert result.exit_code == 0, result.output
        return [np.asarray(Image.open(out / f"{i:05d}" / "samples" / "00000.png")) for i in range(2)]

    shared = first_samples(tmp_path / "shared")
    assert np.array_equal(shared[0], shared[1])  # the reference scheme: one noise draw for every prompt
    separate = first_samples(tmp_path / "separate", "--seed-per-prompt")
    assert not np.array_equal(separate[0], separate[1])
    assert json.loads((tmp_path / "separate" / "settings.json").read_text())["seed_scheme"] == "per_prompt"
    before = (tmp_path / "shared" / "00000" / "samples" / "00000.png").read_bytes()
    mixed = runner.invoke(app, [*base, "--out", str(tmp_path / "shared"), "--seed-per-prompt"])
    assert mixed.exit_code != 0 and "seed_scheme" in mixed.output and "Traceback" not in mixed.output
    assert (tmp_path / "shared" / "00000" / "samples" / "00000.png").read_bytes() == before  # nothing lost


# --- DPG-Bench ----------------------------------------------------------------------------------------------------
def test_dpg_question_graph_has_dpg_categories_and_parents():
    item = dpg.mini_items(5)[4]
    rows = item["rows"]
    ids = {r["proposition_id"] for r in rows}
    assert {r["category_broad"] for r in rows} >= {"entity", "attribute", "relation", "global", "other"}
    for row in rows:
        parents = [int(p) for p in row["dependency"].split(",") if p != "0"]
        assert all(p in ids and p < row["proposition_id"] for p in parents)
        assert row["tuple"].startswith(f"{row['category_broad']} - {row['category_detailed']} (")


def test_dpg_parent_rule_zeroes_children_of_failed_parents():
    raw = {1: 0.0, 2: 1.0, 3: 1.0, 4: 1.0}
    parents = {2: [1], 3: [], 4: [3, 1]}
    assert dpg.apply_parent_rule(raw, parents) == {1: 0.0, 2: 0.0, 3: 1.0, 4: 0.0}


def test_dpg_mini_scores_truth_fully_and_shuffled_or_blank_low(tmp_path):
    dpg.write_mini_prompts(tmp_path, 12)
    items = dpg.mini_items(12)
    assert len(list((tmp_path / "prompts").glob("*.txt"))) == 12
    for item in items:
        make_image_grid([render_scene(item["scene"])] * 4, 2, 2).save(tmp_path / f"{item['item_id']}.png")
    summary = dpg.score_dpg(tmp_path, progress=False)
    assert summary["score"] == pytest.approx(100.0) and summary["images"] == 12
    for n, item in enumerate(items):
        other = render_scene(items[(n + 1) % len(items)]["scene"])
        blank = Image.new("RGB", other.size)
        make_image_grid([other, other, blank, blank], 2, 2).save(tmp_path / f"{item['item_id']}.png")
    low = dpg.score_dpg(tmp_path, progress=False)
    assert low["score"] < 50.0
    (tmp_path / f"{items[0]['item_id']}.png").unlink()
    assert dpg.score_dpg(tmp_path, progress=False)["failed"] == 1


def test_dpg_commands_official_prompts_and_mini(tmp_path, tiny_dir):
    prompts = tmp_path / "official" / "prompts"
    prompts.mkdir(parents=True)
    (prompts / "item_a.txt").write_text("a red circle above a blue square\n")
    out = tmp_path / "dpg_official"
    result = runner.invoke(app, ["eval", "dpg", "--prompts", str(tmp_path / "official"), "--out", str(out),
                                 "--model", str(tiny_dir), *FAST])
    assert result.exit_code == 0, result.output
    grid = Image.open(out / "item_a.png")
    assert grid.size == (2 * 64, 2 * 64)
    result = runner.invoke(app, ["eval", "dpg-score", str(out)])
    assert result.exit_code == 2 and "error:" in result.output  # no mini question file there
    mini = tmp_path / "dpg_mini"
    result = runner.invoke(app, ["eval", "dpg", "--prompts", "mini", "--num", "2", "--out", str(mini),
                                 "--model", str(tiny_dir), *FAST])
    assert result.exit_code == 0, result.output
    summary = _json_line(runner.invoke(app, ["eval", "dpg-score", str(mini), "--json"]))
    assert set(summary) == {"score", "l1", "l2", "images", "failed"} and summary["images"] == 2
    assert 0.0 <= summary["score"] <= 100.0


# --- WISE -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, expected", [
    ("Consistency: 2\nRealism: 1\nAesthetic Quality: 0", {"consistency": 2, "realism": 1, "aesthetic_quality": 0}),
    ("**Consistency**: 1\n**Realism**: 2\n**Aesthetic Quality**: 2", {"consistency": 1, "realism": 2, "aesthetic_quality": 2}),
    (STUB_ANSWER, {"consistency": 2, "realism": 1, "aesthetic_quality": 2}),
    ("consistency 0, realism 0, aesthetic_quality 1", {"consistency": 0, "realism": 0, "aesthetic_quality": 1}),
    ("Consistency: 2\nRealism: 1", None),  # one score missing
    ("Consistency: 5\nRealism: 1\nAesthetic Quality: 1", None),  # out of range
    ("I cannot rate this image.", None),
])
def test_wise_parse_scores(text, expected):
    assert wise.parse_scores(text) == expected


def test_wise_formula_categories_and_weights():
    assert wise.wiscore({"consistency": 2, "realism": 1, "aesthetic_quality": 0}) == pytest.approx(0.8)
    assert wise.wiscore({"consistency": 2, "realism": 2, "aesthetic_quality": 2}) == pytest.approx(1.0)
    assert [wise.category_of(i) for i in (1, 400, 401, 567, 568, 700, 701, 800, 801, 900, 901, 1000)] == [
        "Cultural", "Cultural", "Time", "Time", "Space", "Space", "Biology", "Biology", "Physics", "Physics",
        "Chemistry", "Chemistry"]
    rows = [{"category": c, "wiscore": s} for c, s in
            [("Cultural", 1.0), ("Cultural", 0.5), ("Time", 0.2), ("Space", 0.4), ("Biology", 0.0), ("Physics", 1.0),
             ("Chemistry", 0.5), ("Chemistry", None)]]
    summary = wise.summarize(rows)
    expected = 0.4 * 0.75 + 0.167 * 0.2 + 0.133 * 0.4 + 0.1 * (0.0 + 1.0 + 0.5)
    assert summary["overall"] == pytest.approx(expected) and summary["unparsed"] == 1 and summary["judged"] == 7


class _StubJudge(BaseHTTPRequestHandler):
    seen: list = []

    def do_POST(self):  # noqa: N802 (http.server's name)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _StubJudge.seen.append((self.path, self.headers.get("Authorization"), body))
        payload = json.dumps({"choices": [{"message": {"role": "assistant", "content": STUB_ANSWER}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@pytest.fixture
def stub_judge():
    server = HTTPServer(("127.0.0.1", 0), _StubJudge)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _StubJudge.seen.clear()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_wise_generate_and_judge_through_stub_endpoint(tmp_path, tiny_dir, stub_judge):
    data = tmp_path / "data"
    data.mkdir()
    records = [{"prompt_id": 1, "Prompt": "a festival lantern", "Explanation": "a red paper lantern"},
               {"prompt_id": 450, "Prompt": "the moon at dawn", "Explanation": "a pale moon low in the sky"}]
    (data / "cultural_common_sense.json").write_text(json.dumps(records))
    (data / "cultural_common_sense_rewrite.json").write_text("[]")  # rewritten prompts are kept apart
    out = tmp_path / "wise"
    result = runner.invoke(app, ["eval", "wise", "--prompts", str(data), "--out", str(out), "--model", str(tiny_dir),
                                 *FAST])
    assert result.exit_code == 0, result.output
    assert (out / "1.png").is_file() and (out / "450.png").is_file()
    (out / "450.png").unlink()  # a missing image is a judged zero
    args = ["eval", "wise-score", str(out), "--prompts", str(data / "cultural_common_sense.json"),
            "--base-url", stub_judge, "--judge-model", "stub", "--api-key", "k", "--json"]
    summary = _json_line(runner.invoke(app, args))
    assert summary["categories"] == {"Cultural": pytest.approx(0.9), "Time": 0.0}
    assert summary["overall"] == pytest.approx(0.4 * 0.9 / (0.4 + 0.167)) and summary["images"] == 2
    path, auth, body = _StubJudge.seen[0]
    assert path == "/v1/chat/completions" and auth == "Bearer k" and body["temperature"] == 0
    content = body["messages"][-1]["content"]
    assert "a red paper lantern" in content[0]["text"] and content[1]["image_url"]["url"].startswith("data:image/png")
    _json_line(runner.invoke(app, args))
    assert len(_StubJudge.seen) == 1  # resumed from the judgement file


def test_wise_unreachable_judge_is_a_user_error(tmp_path):
    (tmp_path / "p.json").write_text(json.dumps([{"prompt_id": 3, "Prompt": "x"}]))
    Image.new("RGB", (8, 8)).save(tmp_path / "3.png")
    from openblip3o.evaluation.wise import ChatJudge, JudgeError, judge_folder

    with pytest.raises(JudgeError):
        judge_folder(tmp_path, wise.load_prompts(tmp_path / "p.json"),
                     ChatJudge("http://127.0.0.1:9", attempts=1, timeout=2), progress=False)


# --- understanding ----------------------------------------------------------------------------------------------
def test_lmms_adapter_answers_constructed_requests(tiny_dir):
    pipe = BLIP3oPipeline.from_pretrained(tiny_dir)
    lmm = OpenBLIP3oLMM(pipeline=pipe, batch_size=2)
    image = Image.fromarray(np.zeros((64, 64, 3), dtype=np.uint8))
    lmm.task_dict = {"mme": {"test": {0: {"image": image}, 1: {"image": image}, 2: {"image": image}}}}
    visual = lambda doc: [doc["image"]]  # noqa: E731
    requests = [SimpleNamespace(args=(f"<image>\nhow many shapes are there? {i}", {"until": ["\n"], "max_new_tokens": 4},
                                      visual, i, "mme", "test")) for i in range(3)]
    answers = lmm.generate_until(requests)
    assert len(answers) == 3 and all(isinstance(a, str) and "\n" not in a for a in answers)
    assert answers == [a.strip() for a in pipe.answer([image] * 3, ["how many shapes are there? 0",
                                                                     "how many shapes are there? 1",
                                                                     "how many shapes are there? 2"], max_new_tokens=4)]
    with pytest.raises(NotImplementedError, match="log-likelihood"):
        lmm.loglikelihood(requests)
    with pytest.raises(KeyError, match="mme/test/7"):
        lmm.generate_until([SimpleNamespace(args=("q", {}, visual, 7, "mme", "test"))])


def test_vqa_heldout_command(tiny_dir):
    result = _json_line(runner.invoke(app, ["eval", "vqa-heldout", "--model", str(tiny_dir), "--num", "3", "--json"]))
    assert set(result) == {"accuracy", "by_type", "questions"} and result["questions"] >= 9


def test_vqa_command_scores_the_split_it_is_given(tiny_dir):
    from openblip3o.data.shapes import ShapesWorld

    expected = {split: sum(len(ShapesWorld(split, 0)[i].annotation["vqa"]) for i in range(4)) for split in ("eval", "heldout")}
    for split, count in expected.items():
        result = _json_line(runner.invoke(app, ["eval", "vqa-heldout", "--model", str(tiny_dir), "--num", "4",
                                                "--split", split, "--json"]))
        assert result["questions"] == count
    refused = runner.invoke(app, ["eval", "vqa-heldout", "--model", str(tiny_dir), "--split", "train", "--json"])
    assert refused.exit_code == 2 and "--split must be heldout or eval" in refused.output


def test_lookup_report_tells_a_failed_lookup_from_a_wrong_reading():
    from openblip3o.data.shapes import Scene, ShapeObject
    from openblip3o.evaluation.vqa import lookup_report

    star = ShapeObject(shape="star", color="red", size="large", cx=16, cy=16, radius=8)
    cross = ShapeObject(shape="cross", color="blue", size="large", cx=48, cy=48, radius=8)
    pair, alone = Scene(objects=(star, cross), image_size=64), Scene(objects=(star,), image_size=64)
    questions = ["what shape is the red object?"] * 3 + ["what color is the cross?", "what shape is the red object?"]
    types = ["shape"] * 3 + ["color", "shape"]
    scenes = [pair, pair, pair, pair, alone]  # the one-object scene needs no lookup and is left out
    report = lookup_report(["star", "cross", "circle", "blue", "cross"], questions, types, scenes)
    assert report == {"color": {"accuracy": 1.0, "other_object": 0.0, "questions": 1},
                      "shape": {"accuracy": 1 / 3, "other_object": 1 / 3, "questions": 3}}
    assert lookup_report(["two"], ["how many stars are there?"], ["count"], [pair]) == {}


def test_named_count_report_splits_counts_by_whether_the_shape_is_there():
    from openblip3o.evaluation.vqa import named_count_report

    questions = ["how many stars are there?", "how many stars are there?", "how many crosses are there?",
                 "how many shapes are there?", "what color is the star?"]
    answers, types = ["one", "zero", "zero", "two", "red"], ["count"] * 4 + ["color"]
    # a model answering "zero" to everything: right on every absent shape, wrong on every present one
    report = named_count_report(["zero", "zero", "0", "zero", "zero"], questions, answers, types)
    assert report == {"absent": {"accuracy": 1.0, "questions": 2}, "present": {"accuracy": 0.0, "questions": 1}}
    assert named_count_report(["two"], questions[3:4], answers[3:4], types[3:4]) == {}  # "how many shapes" is apart


def test_vqa_heldout_command_reports_lookups_on_request(tiny_dir):
    result = _json_line(runner.invoke(app, ["eval", "vqa-heldout", "--model", str(tiny_dir), "--num", "12",
                                            "--split", "eval", "--lookup", "--json"]))
    assert set(result) == {"accuracy", "by_type", "questions", "lookup", "named_count"}
    for kind, value in result["lookup"].items():
        assert kind in ("color", "shape") and 0 < value["questions"] <= result["questions"]
        assert 0.0 <= value["accuracy"] + value["other_object"] <= 1.0
    sides = result["named_count"]
    assert set(sides) <= {"present", "absent"} and sum(v["questions"] for v in sides.values()) == 12  # one per scene
