"""The mini GenEval scorer, validated on real renders: truth scores high, shuffled/blank/noise score low."""

import json
import random
import shutil

import numpy as np
import pytest
from conftest import write_layout
from PIL import Image

from openblip3o.data.shapes import PromptSampler, ShapesWorld, realise, render_scene
from openblip3o.data.shapes.rules import Detection, evaluate, relative_position
from openblip3o.evaluation.geneval.detector import detect, foreground_colour
from openblip3o.evaluation.geneval.layout import MetadataError
from openblip3o.evaluation.geneval.score import score_folder, summarize


def test_ground_truth_renders_score_at_least_099(truth_dir):
    summary = score_folder(truth_dir, progress=False)
    assert summary["images"] == 553 * 4
    assert summary["overall"] >= 0.99
    assert all(value >= 0.98 for value in summary["tags"].values()), summary["tags"]
    rows = [json.loads(line) for line in (truth_dir / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 553 * 4 and {"filename", "tag", "correct", "reason"} <= set(rows[0])


def test_shuffled_metadata_scores_at_most_010(truth_dir, tmp_path):
    shuffled = shutil.copytree(truth_dir, tmp_path / "shuffled")
    folders = sorted(p for p in shuffled.iterdir() if p.is_dir())
    texts = [(f / "metadata.jsonl").read_text() for f in folders]
    random.Random(0).shuffle(texts)
    for folder, text in zip(folders, texts):
        (folder / "metadata.jsonl").write_text(text)
    summary = score_folder(shuffled, progress=False)
    assert summary["overall"] <= 0.10, summary


def test_blank_and_noise_images_score_zero(heldout_records, tmp_path):
    rng = np.random.default_rng(0)
    records = heldout_records[::10]
    blank = [Image.new("RGB", (64, 64)) for _ in range(2)]
    noise = [Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)) for _ in range(2)]
    summary = score_folder(write_layout(tmp_path / "b", [(r, blank) for r in records]), progress=False)
    assert summary["overall"] == 0.0 and summary["images"] == 2 * len(records)
    summary = score_folder(write_layout(tmp_path / "n", [(r, noise) for r in records]), progress=False)
    assert summary["overall"] == 0.0


def test_detector_reads_every_object_exactly():
    world = ShapesWorld("train", seed=11)
    for index in range(300):
        example = world[index]
        detections, blobs = detect(example.image)
        truth = sorted((o.shape, o.color, o.box) for o in example.scene.objects)
        assert sorted((d.shape, d.color, tuple(d.box)) for d in detections) == truth
        assert not blobs


def test_foreground_colour_reads_one_colour_scenes_and_blurred_blobs():
    from PIL import ImageFilter

    world = ShapesWorld("train", seed=3)
    checked = 0
    for index in range(200):
        example = world[index]
        colours = {o.color for o in example.scene.objects}
        if len(colours) != 1:
            continue
        (colour,) = colours
        assert foreground_colour(example.image) == colour
        # shapes dilated out of their outline (what the detector reports as blobs) still show their colour
        assert foreground_colour(example.image.filter(ImageFilter.MaxFilter(7))) == colour
        checked += 1
    assert checked >= 20
    assert foreground_colour(Image.new("RGB", (64, 64))) is None


def test_detector_works_at_another_resolution():
    from openblip3o.data.shapes import WorldConfig

    world = ShapesWorld("eval", seed=2, config=WorldConfig(image_size=128))
    for index in range(50):
        example = world[index]
        assert example.image.size == (128, 128)
        correct, reason = evaluate(example.scene.metadata, detect(example.image)[0])
        assert correct, reason


def test_missing_samples_and_unreadable_png_count_as_failed(heldout_records, tmp_path):
    rec = heldout_records[0]
    good = render_scene(realise(rec, random.Random(0)))
    root = write_layout(tmp_path / "d", [(rec, [good]), (rec, [good, good])])
    (root / "00000" / "samples" / "00000.png").unlink()
    (root / "00000" / "samples").rmdir()
    (root / "00001" / "samples" / "00001.png").write_bytes(b"not a png")
    summary = score_folder(root, progress=False)
    rows = [json.loads(line) for line in (root / "results.jsonl").read_text().splitlines()]
    assert summary["images"] == 3
    reasons = [r["reason"] for r in rows if not r["correct"]]
    assert len(reasons) == 2
    assert any("missing samples" in r for r in reasons) and any("unreadable image" in r for r in reasons)
    assert summary["tags"]["single_object"] == pytest.approx(1 / 3)


def test_malformed_metadata_names_file_and_line(heldout_records, tmp_path):
    root = write_layout(tmp_path / "m", [(heldout_records[0], [Image.new("RGB", (64, 64))])])
    (root / "00000" / "metadata.jsonl").write_text('{"tag": "single_object", "include": [\n')
    with pytest.raises(MetadataError, match=r"00000/metadata.jsonl:1: malformed JSON"):
        score_folder(root, progress=False)


def test_unknown_class_or_color_lists_the_known_ones(tmp_path):
    bad = {"tag": "colors", "include": [{"class": "circle", "count": 1, "color": "brown"}], "prompt": "x"}
    root = write_layout(tmp_path / "u", [(bad, [Image.new("RGB", (64, 64))])])
    with pytest.raises(MetadataError, match=r"unknown color 'brown'; ShapesWorld knows: red, orange"):
        score_folder(root, progress=False)


def _det(shape, color, box):
    return Detection(shape=shape, color=color, box=box, confidence=1.0)


def test_position_rule_uses_genevals_margin():
    # Centres 10 px apart horizontally, boxes 20 px wide: the margin 0.1*(20+20)=4 leaves dx=6/10=0.6 -> left of.
    assert relative_position((0, 0, 20, 20), (10, 0, 30, 20)) == {"left of"}
    # 6 px apart: 6-4=2, 2/6=0.33 < 0.5 -> no relation.
    assert relative_position((0, 0, 20, 20), (6, 0, 26, 20)) == set()
    # Diagonal: both axes can hold.
    assert relative_position((0, 0, 4, 4), (40, 40, 44, 44)) == {"left of", "above"}
    assert relative_position((5, 5, 9, 9), (5, 5, 9, 9)) == set()


def test_evaluate_semantics_counts_colors_exclude_position():
    two = {"tag": "counting", "include": [{"class": "star", "count": 2}], "exclude": [{"class": "star", "count": 3}]}
    stars = [_det("star", "red", (i * 10, 0, i * 10 + 8, 8)) for i in range(3)]
    assert evaluate(two, stars[:2])[0]
    correct, reason = evaluate(two, stars)
    assert not correct and "expected star<3, found 3" in reason
    assert not evaluate(two, stars[:1])[0]
    colors = {"tag": "colors", "include": [{"class": "circle", "count": 1, "color": "blue"}]}
    assert evaluate(colors, [_det("circle", "blue", (0, 0, 9, 9))])[0]
    assert not evaluate(colors, [_det("circle", "red", (0, 0, 9, 9))])[0]
    position = {
        "tag": "position",
        "include": [{"class": "square", "count": 1}, {"class": "circle", "count": 1, "position": ["above", 0]}],
    }
    square, high, low = (20, 40, 30, 50), (20, 0, 30, 10), (20, 52, 30, 62)
    assert evaluate(position, [_det("square", "red", square), _det("circle", "red", high)])[0]
    correct, reason = evaluate(position, [_det("square", "red", square), _det("circle", "red", low)])
    assert not correct and "expected circle above target, found below target" in reason
    correct, reason = evaluate(position, [_det("circle", "red", high)])
    assert not correct and "no target for circle" in reason


def test_summary_is_mean_of_tag_means():
    rows = [{"tag": "colors", "correct": c} for c in (True, True, True, False)] + [
        {"tag": "position", "correct": False}
    ]
    summary = summarize(rows)
    assert summary == {"overall": pytest.approx(0.375), "tags": {"colors": 0.75, "position": 0.0}, "images": 5}


def test_each_tag_is_scored_from_pixels_not_metadata():
    """A render of one record fails another record of the same tag whose content differs."""
    sampler, rng = PromptSampler("eval"), random.Random(5)
    for tag in ("single_object", "two_object", "counting", "colors", "position", "color_attr"):
        rec = sampler.sample(tag, rng)
        image = render_scene(realise(rec, rng))
        assert evaluate(rec, detect(image)[0])[0]
        other = sampler.sample(tag, rng)
        while other["prompt"] == rec["prompt"]:
            other = sampler.sample(tag, rng)
        if tag != "single_object":
            assert not evaluate(other, detect(image)[0])[0], (rec["prompt"], other["prompt"])
