"""Word pointing: the answer position is taught to attend to the words that name what the question asks about."""

import pytest
import torch

from openblip3o.config import ConfigError
from openblip3o.data.shapes.question_targets import named_words
from openblip3o.inference.pipeline import BLIP3oPipeline
from openblip3o.training.config import UnderstandingMix
from openblip3o.training.stages.understanding import UnderstandingTask
from openblip3o.training.stages.word_pointer import WordPointer
from test_vision_labels import fit_one_batch
from tiny import tiny_config


def test_named_words_are_the_colour_and_shape_words_of_the_phrase():
    assert named_words("what shape is the red object?") == ["red"]
    assert named_words("what color is the star?") == ["star"]
    assert named_words("how many crosses are there?") == ["crosses"]
    assert named_words("how many shapes are there?") == []
    relation = "is the blue cross left of the red star?"
    assert named_words(relation) == ["blue", "cross"]
    assert named_words(relation, "relation_second") == ["red", "star"]
    assert named_words("what color is the star?", "relation_second") == []
    with pytest.raises(ValueError, match="phrase"):
        named_words(relation, "third")


def test_the_question_being_answered_is_found_not_an_earlier_turn():
    torch.manual_seed(0)
    model = BLIP3oPipeline.from_preset("mini", tiny_config()).model
    tokenizer = model.backbone.tokenizer
    pointer = WordPointer(model.backbone.model, layer=1, head=0, tokenizer=tokenizer)
    try:
        encode = lambda text: tokenizer.encode(text, add_special_tokens=False)  # noqa: E731
        earlier, asked = encode("what color is the star? red"), encode(" what shape is the red object?")
        ids = torch.tensor(earlier + asked)
        [[red]] = pointer.targets(None, [["what shape is the red object?"]])[0]
        answer_position = len(ids) - 1
        found = pointer.named_positions(ids, answer_position, [red])
        assert found.tolist() == [len(earlier) + asked.index(red[0])]  # the red of the question, not the answer
        assert pointer.named_positions(ids, answer_position, []) is None  # "how many shapes": nothing named
        assert pointer.named_positions(ids, answer_position, [encode(" purple")]) is None
    finally:
        pointer.remove()


def test_word_pointer_trains_its_head_and_needs_the_language_model():
    torch.manual_seed(0)
    model = BLIP3oPipeline.from_preset("mini", tiny_config()).model.train()
    qwen = model.backbone.model
    before = qwen.config._attn_implementation
    mix = UnderstandingMix(text_rows=0.0, turns=5, word_pointer_weight=1.0, word_pointer_layer=1, word_pointer_head=0)
    task = UnderstandingTask(model, seed=0, mix=mix)
    batch = task.batch(0, 8)
    assert any(words for row in batch[4]["word_pointer"] for words in row)
    first, logs = fit_one_batch(task, batch, "word_pointer", steps=30)
    assert logs["word_pointer"] < 0.5 * first and logs["word_pointer_mass"] > 0.9
    task.finish()
    assert qwen.config._attn_implementation == before
    with pytest.raises(ConfigError, match="word_pointer_weight"):
        UnderstandingTask(model, mix=UnderstandingMix(text_rows=0.0, trainable="vision", word_pointer_weight=1.0))
    with pytest.raises(ValueError, match="word_pointer_layer"):
        UnderstandingTask(model, mix=UnderstandingMix(text_rows=0.0, word_pointer_weight=1.0, word_pointer_layer=9))


def test_a_pointer_taught_absent_objects_looks_at_the_image_start():
    from openblip3o.data.shapes import Scene, ShapeObject
    from openblip3o.training.stages.answer_pointer import AnswerPointer

    torch.manual_seed(0)
    qwen = BLIP3oPipeline.from_preset("mini", tiny_config()).model.backbone.model
    star = ShapeObject(shape="star", color="red", size="large", cx=16, cy=16, radius=8)
    scene = Scene(objects=(star,), image_size=64)
    start, image, text = qwen.config.vision_start_token_id, qwen.config.image_token_id, 7
    ids = torch.tensor([text, start] + [image] * 64 + [text] * 5)
    questions = ["how many circles are there?", "how many stars are there?", "how many shapes are there?"]
    for absent, expected_absent in ((False, None), (True, [1])):
        pointer = AnswerPointer(qwen, layer=1, head=0, grid_size=8, absent_to_image_start=absent)
        try:
            circles, stars, shapes = pointer.targets([scene], [questions])[0]
            found = pointer.named_positions(ids, len(ids) - 1, circles)
            assert (found.tolist() if found is not None else None) == expected_absent  # no circle: the image start
            assert len(pointer.named_positions(ids, len(ids) - 1, stars)) == stars.sum() > 0  # the star's tokens
            assert shapes is None and pointer.named_positions(ids, len(ids) - 1, shapes) is None  # names nothing
        finally:
            pointer.remove()
