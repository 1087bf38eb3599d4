"""ShapesWorld: seeded scenes, GenEval schema and phrasing, the held-out split, captions and exact VQA."""

import random
import re
from collections import Counter

import pytest

from openblip3o.data.shapes import (
    COLORS,
    GENEVAL_TAG_COUNTS,
    HELDOUT_COLOR_SHAPES,
    SHAPES,
    PlacementError,
    PromptSampler,
    ShapesWorld,
    WorldConfig,
    evaluation_set,
    make_prompt,
    normalize_answer,
    realise,
    vocabulary,
)
from openblip3o.data.shapes.rules import relative_position
from openblip3o.data.shapes.world import heldout_relation_forms
from openblip3o.evaluation.geneval.detector import detect


def test_world_has_genevals_required_vocabulary():
    assert {"circle", "square", "triangle", "star"} <= set(SHAPES)
    assert {"red", "orange", "yellow", "green", "blue", "purple", "pink", "white"} <= set(COLORS)


def test_scenes_are_seeded_and_independent_of_order():
    a, b = ShapesWorld("train", seed=7), ShapesWorld("train", seed=7)
    assert [a[i].annotation for i in (5, 1, 3)] == [b[i].annotation for i in (5, 1, 3)]
    assert a[2].image.tobytes() == b[2].image.tobytes()
    other = ShapesWorld("train", seed=8)
    assert [a[i].annotation["objects"] for i in range(10)] != [other[i].annotation["objects"] for i in range(10)]


def test_default_image_is_64px_and_size_is_configurable():
    assert ShapesWorld()[0].image.size == (64, 64)
    assert ShapesWorld(config=WorldConfig(image_size=96))[0].image.size == (96, 96)


def test_geneval_schema_and_phrasing():
    records = evaluation_set("eval")
    assert len(records) == 553
    assert Counter(r["tag"] for r in records) == GENEVAL_TAG_COUNTS
    assert list(Counter(r["tag"] for r in records)) == list(GENEVAL_TAG_COUNTS)  # GenEval's order
    for rec in records:
        assert list(rec)[0] == "tag" and list(rec)[-1] == "prompt"
        assert rec["prompt"] == make_prompt(rec) and rec["prompt"].startswith("a photo of ")
    by_tag = {r["tag"]: r for r in records}
    count = by_tag["counting"]["include"][0]["count"]
    assert by_tag["counting"]["exclude"] == [{"class": by_tag["counting"]["include"][0]["class"], "count": count + 1}]
    position = by_tag["position"]
    assert "position" not in position["include"][0] and position["include"][1]["position"][1] == 0
    a, b = position["include"][1]["class"], position["include"][0]["class"]
    relation = position["include"][1]["position"][0]
    assert position["prompt"] == f"a photo of {'an' if a[0] in 'aeiou' else 'a'} {a} {relation} " + (
        f"{'an' if b[0] in 'aeiou' else 'a'} {b}"
    )
    assert make_prompt({"tag": "colors", "include": [{"class": "circle", "count": 1, "color": "orange"}]}) == (
        "a photo of an orange circle"
    )
    assert make_prompt({"tag": "counting", "include": [{"class": "cross", "count": 3}]}) == "a photo of three crosses"


def test_heldout_prompts_use_only_heldout_combinations():
    forms = heldout_relation_forms()
    for rec in evaluation_set("heldout"):
        inc = rec["include"]
        if rec["tag"] == "colors":
            assert (inc[0]["color"], inc[0]["class"]) in HELDOUT_COLOR_SHAPES
        if rec["tag"] == "color_attr":
            assert any((c["color"], c["class"]) in HELDOUT_COLOR_SHAPES for c in inc)
        if rec["tag"] == "position":
            assert (inc[1]["class"], inc[1]["position"][0], inc[0]["class"]) in forms
    for rec in evaluation_set("eval"):
        inc = rec["include"]
        assert not any((c.get("color"), c["class"]) in HELDOUT_COLOR_SHAPES for c in inc)
        if rec["tag"] == "position":
            assert (inc[1]["class"], inc[1]["position"][0], inc[0]["class"]) not in forms


def test_training_scenes_never_show_a_heldout_combination():
    """Checked from the rendered pixels, by the same rule GenEval uses for positions."""
    world, forms = ShapesWorld("train", seed=3), heldout_relation_forms()
    for index in range(1500):
        detections, _ = detect(world[index].image)
        assert not any((d.color, d.shape) in HELDOUT_COLOR_SHAPES for d in detections)
        for a in detections:
            for b in detections:
                if a is not b:
                    assert not any((a.shape, rel, b.shape) in forms for rel in relative_position(a.box, b.box))


def test_captions_and_vqa_are_exact():
    world = ShapesWorld("train", seed=4)
    for index in range(400):
        example = world[index]
        objects = example.scene.objects
        long, short = example.annotation["captions"]["long"], example.annotation["captions"]["short"]
        for obj in objects:
            assert f"{obj.size} {obj.color} {obj.shape}" in long
        assert len(short) < len(long)
        detections, _ = detect(example.image)
        for qa in example.annotation["vqa"]:
            question, answer = qa["question"], qa["answer"]
            if m := re.fullmatch(r"what color is the (\w+)\?", question):
                assert [d.color for d in detections if d.shape == m[1]] == [answer]
            elif m := re.fullmatch(r"how many (\w+) are there\?", question):
                words = ["zero", "one", "two", "three", "four", "five"]
                noun = m[1]
                n = len(detections) if noun == "shapes" else sum(d.shape + ("es" if d.shape.endswith("s") else "s") == noun for d in detections)
                assert words[n] == answer
            elif m := re.fullmatch(r"what shape is the (\w+) object\?", question):
                assert [d.shape for d in detections if d.color == m[1]] == [answer]
            else:
                m = re.fullmatch(r"is the (\w+) (\w+) (left of|right of|above|below) the (\w+) (\w+)\?", question)
                assert m, question
                a = next(d for d in detections if (d.color, d.shape) == (m[1], m[2]))
                b = next(d for d in detections if (d.color, d.shape) == (m[4], m[5]))
                assert (m[3] in relative_position(a.box, b.box)) == (answer == "yes")


def test_all_text_is_in_the_closed_vocabulary():
    words = set(vocabulary())
    world = ShapesWorld("heldout", seed=1)
    for index in range(300):
        annotation = world[index].annotation
        texts = [annotation["captions"]["long"], annotation["captions"]["short"], annotation["prompt"]]
        texts += [qa["question"] + " " + qa["answer"] for qa in annotation["vqa"]]
        for text in texts:
            assert set(re.findall(r"\w+|[^\w\s]", text)) <= words, text


def test_normalize_answer():
    assert normalize_answer("The 2.") == "two"
    assert normalize_answer("  A Red!") == "red"
    assert normalize_answer("yes") != normalize_answer("no")


def test_bad_requests_are_clear_errors():
    with pytest.raises(ValueError, match="unknown split"):
        PromptSampler("test")
    with pytest.raises(ValueError, match="unknown class 'dog'; ShapesWorld knows: circle"):
        realise({"tag": "single_object", "include": [{"class": "dog", "count": 1}]}, random.Random(0))
    with pytest.raises(PlacementError, match="at most 4"):
        realise({"tag": "counting", "include": [{"class": "star", "count": 9}]}, random.Random(0))
