"""`openblip3o eval mirror`: relation questions asked of an image and of its mirror tell a reader of positions from
a word prior."""

import pytest
from PIL import Image

from openblip3o.evaluation.relation_mirror import mirrored, relation_mirror, score_mirror


def test_mirror_flips_across_the_axis_the_question_names():
    image = Image.new("RGB", (4, 4))
    image.putpixel((0, 1), (255, 0, 0))
    assert mirrored(image, "is the red circle left of the star?").getpixel((3, 1)) == (255, 0, 0)
    assert mirrored(image, "is the red circle above the star?").getpixel((0, 2)) == (255, 0, 0)


def test_score_mirror_separates_a_reader_from_a_prior():
    truth = ["yes", "no", "no", "yes"]
    reader = score_mirror(truth, ["no", "yes", "yes", "no"], truth)
    assert reader == {"accuracy": 1.0, "mirrored_accuracy": 1.0, "answer_changed": 1.0, "yes_share": 0.5,
                      "questions": 4}
    prior = score_mirror(["no"] * 4, ["No."] * 4, truth)
    assert prior["accuracy"] == 0.5 and prior["mirrored_accuracy"] == 0.5 and prior["answer_changed"] == 0.0
    with pytest.raises(ValueError):
        score_mirror(["yes"], [], ["yes"])


class _Prior:
    """Answers every question "no", whatever the image."""

    def answer(self, images, questions):
        return ["no"] * len(questions)


class _Reader:
    """Reads the scene it was given: the answer is "yes" when the image is one of the world's own, else "no" — a
    stand-in that changes its answer on every mirror (what a model that reads positions does)."""

    def __init__(self):
        self.originals = set()

    def answer(self, images, questions):
        return ["yes" if image.tobytes() in self.originals else "no" for image in images]


def test_relation_mirror_on_shapesworld_scenes():
    prior = relation_mirror(_Prior(), num=30, split="eval")
    assert prior["questions"] > 0 and prior["answer_changed"] == 0.0
    assert prior["accuracy"] == pytest.approx(1 - prior["yes_share"])
    from openblip3o.data.shapes import ShapesWorld

    reader = _Reader()
    world = ShapesWorld("eval", 0)
    reader.originals = {world[i].image.tobytes() for i in range(30)}
    assert relation_mirror(reader, num=30, split="eval")["answer_changed"] == 1.0
