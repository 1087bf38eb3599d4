"""Dense per-token labels for the vision tower (understanding stage): exact truth, and a loss the tower learns."""

import numpy as np
import pytest
import torch

from openblip3o.data.shapes import COLORS, SHAPES, Scene, ShapeObject, ShapesWorld
from openblip3o.data.shapes.render import render_labels, render_scene, token_labels
from openblip3o.inference.pipeline import BLIP3oPipeline
from openblip3o.training.config import UnderstandingMix
from openblip3o.training.stages.understanding import UnderstandingTask
from tiny import tiny_config


def fit_one_batch(task, batch, key: str, steps: int = 15) -> tuple[float, dict]:
    """AdamW on the task's trainable modules over the same batch: (the first step's logs[key], the last logs)."""
    params = [p for module in task.modules().values() for p in module.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(params, 3e-3)
    first = None
    for _ in range(steps):
        loss, logs = task.loss(batch, None)
        first = logs[key] if first is None else first
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return first, logs


def test_label_map_is_exactly_the_drawn_pixels():
    world = ShapesWorld("train", 0)
    for index in range(20):
        example = world[index]
        drawn = np.asarray(example.image).sum(-1) > 0
        assert np.array_equal(render_labels(example.scene) > 0, drawn)


def test_token_labels_name_the_object_under_each_cell():
    square = ShapeObject(shape="square", color="blue", size="large", cx=16, cy=16, radius=8)  # pixels 8..23
    star = ShapeObject(shape="star", color="red", size="small", cx=52, cy=52, radius=6)
    labels = token_labels(Scene(objects=(square, star), image_size=64), grid_size=8)
    shape, color = labels["shape"].reshape(8, 8), labels["color"].reshape(8, 8)
    assert (shape[1:3, 1:3] == SHAPES.index("square") + 1).all() and (color[1:3, 1:3] == COLORS.index("blue") + 1).all()
    assert shape[6, 6] == SHAPES.index("star") + 1 and set(shape[shape > 0].tolist()) == {1 + SHAPES.index(s) for s in ("square", "star")}
    assert shape[0].sum() == 0 and shape[:, 0].sum() == 0 and shape[3:5, 3:5].sum() == 0  # background stays 0


@pytest.mark.parametrize("weight", [0.0, 1.0])
def test_understanding_stage_trains_the_vision_tower_on_token_labels(weight):
    torch.manual_seed(0)
    model = BLIP3oPipeline.from_preset("mini", tiny_config()).model.train()
    task = UnderstandingTask(model, seed=0, mix=UnderstandingMix(vision_label_weight=weight, text_rows=0.0))
    batch = task.batch(0, 8)
    if weight == 0:
        assert batch[4] is None and "vision_label_heads" not in task.modules()
        assert "vision_labels" not in task.loss(batch, None)[1]
        return
    assert batch[4]["vision"]["shape"].shape == (8, 64) and batch[4]["vision"]["shape"].max() > 0
    first, logs = fit_one_batch(task, batch, "vision_labels")  # the tower and heads must fit its labels
    assert logs["vision_labels"] < 0.7 * first
    task.finish()  # the hook is gone: a later forward pass keeps nothing
    model.backbone.answer([render_scene(task.source.examples(0, 1)[0].scene)],
                          ["what shape is it?"])
    assert task.vision_labels._tokens is None


@pytest.mark.parametrize("weight", [0.0, 1.0])
def test_encoder_stage_trains_the_target_tokens_on_token_labels(weight):
    """The CLIP target encoder's tokens (the DiT's target) learn to name the shape and colour under them."""
    from openblip3o.data.sources import ShapesSource
    from openblip3o.training.stages.autoencoder import EncoderTask

    torch.manual_seed(0)
    model = BLIP3oPipeline.from_preset("mini", tiny_config()).model.train()
    task = EncoderTask(model.target_encoder, model.backbone.tokenizer, ShapesSource("train", 0), label_weight=weight)
    batch = task.batch(0, 8)
    if weight == 0:
        assert "labels" not in batch and "label_heads" not in task.modules()
        assert "labels" not in task.loss(batch, None)[1]
        return
    grid = model.target_encoder.patch_grid
    assert batch["labels"]["shape"].shape == (8, grid * grid) and batch["labels"]["shape"].max() > 0
    first, logs = fit_one_batch(task, batch, "labels")  # the encoder and heads must fit its labels
    assert logs["labels"] < 0.7 * first and logs["shape_token_acc"] > 0.5
    task.finish()


def test_token_labels_need_shapesworld_objects():
    from openblip3o.training.stages.vision_labels import scenes_of

    example = ShapesWorld("train", 0)[0]
    assert scenes_of([example], "x") == [example.scene]
    with pytest.raises(ValueError, match="encoder_label_weight"):
        scenes_of([type(example)(key="k", image=example.image, scene=None, annotation={})], "encoder_label_weight")


def test_balanced_label_loss_weighs_object_and_background_tokens_equally():
    """With ~85 % background tokens, one mean over all tokens is mostly background; balanced halves it."""
    import torch.nn.functional as F

    from openblip3o.training.stages.vision_labels import TokenLabelHeads

    torch.manual_seed(0)
    heads = TokenLabelHeads(token_dim=16, grid_size=4, balanced=True)
    tokens = torch.randn(2, 16, 16)
    labels = {kind: torch.zeros(2, 16, dtype=torch.long) for kind in ("shape", "color")}
    labels["shape"][0, :3], labels["color"][0, :3] = 2, 5  # three object tokens of 32
    loss, logs = heads.token_loss(tokens, labels)
    expected = []
    for kind, head in heads.heads.items():
        per_token = F.cross_entropy(head(tokens.reshape(-1, 16)), labels[kind].reshape(-1), reduction="none")
        on_object = labels[kind].reshape(-1) > 0
        expected.append(0.5 * (per_token[on_object].mean() + per_token[~on_object].mean()))
    assert loss.item() == pytest.approx(torch.stack(expected).mean().item(), rel=1e-5)
    heads.balanced = False
    plain, _ = heads.token_loss(tokens, labels)
    assert plain.item() != pytest.approx(loss.item(), rel=1e-3)
    right = heads.heads["shape"](tokens.reshape(-1, 16)).argmax(-1) == labels["shape"].reshape(-1)
    assert logs["shape_object_acc"] == pytest.approx(right[:3].float().mean().item())  # object tokens only


def test_position_labels_name_each_object_tokens_column_and_row():
    """`vision_label_position`: object tokens are labelled with their own grid column and row (1-based), background
    tokens 0; the heads exist only when asked for."""
    from openblip3o.training.stages.vision_labels import TokenLabelHeads

    square = ShapeObject(shape="square", color="blue", size="large", cx=16, cy=16, radius=8)  # cells (1..2, 1..2)
    scene = Scene(objects=(square,), image_size=64)
    assert set(TokenLabelHeads(16, 8).labels([scene])) == {"shape", "color"}
    labels = TokenLabelHeads(16, 8, position=True).labels([scene])
    on_object = labels["shape"][0] > 0
    column, row = labels["column"][0].reshape(8, 8), labels["row"][0].reshape(8, 8)
    rows, columns = torch.nonzero(on_object.reshape(8, 8), as_tuple=True)
    assert len(rows) > 0
    assert torch.equal(column[rows, columns], columns + 1) and torch.equal(row[rows, columns], rows + 1)
    assert (labels["column"][0][~on_object] == 0).all() and (labels["row"][0][~on_object] == 0).all()


def test_token_relations_name_each_objects_neighbours_by_direction():
    from openblip3o.data.shapes.token_relations import IGNORE, token_relations
    from openblip3o.data.shapes.world import RELATIONS

    square = ShapeObject(shape="square", color="blue", size="large", cx=12, cy=32, radius=8)
    star = ShapeObject(shape="star", color="red", size="large", cx=52, cy=32, radius=8)
    relations = token_relations(Scene(objects=(square, star), image_size=64), grid_size=8)
    owners = token_labels(Scene(objects=(square, star), image_size=64), 8)["shape"]
    column = {relation: k for k, relation in enumerate(RELATIONS)}
    on_square, on_star = owners == SHAPES.index("square") + 1, owners == SHAPES.index("star") + 1
    assert on_square.any() and on_star.any()
    assert (relations[on_square, column["right of"]] == SHAPES.index("star") + 1).all()  # a star right of the square
    assert (relations[on_star, column["left of"]] == SHAPES.index("square") + 1).all()
    assert (relations[on_square, column["left of"]] == 0).all() and (relations[on_star, column["above"]] == 0).all()
    assert (relations[owners == 0] == IGNORE).all()


def test_relation_labels_train_the_language_models_image_token_states():
    torch.manual_seed(0)
    model = BLIP3oPipeline.from_preset("mini", tiny_config()).model.train()
    plain = UnderstandingTask(model, seed=0, mix=UnderstandingMix(text_rows=0.0))
    assert "relation_label_heads" not in plain.modules()
    mix = UnderstandingMix(text_rows=0.0, relation_label_weight=1.0, relation_label_layer=1)
    task = UnderstandingTask(model, seed=0, mix=mix)
    batch = task.batch(0, 8)
    assert batch[4]["relation"].shape == (8, 64, 4) and (batch[4]["relation"] > 0).any()
    first, logs = fit_one_batch(task, batch, "relation_labels")
    assert logs["relation_labels"] < 0.5 * first
    task.finish()
    with pytest.raises(Exception, match="relation_label"):
        UnderstandingTask(model, mix=UnderstandingMix(text_rows=0.0, relation_label_weight=1.0, trainable="vision"))
    with pytest.raises(ValueError, match="relation_label_layer"):
        UnderstandingTask(model, mix=UnderstandingMix(text_rows=0.0, relation_label_weight=1.0, relation_label_layer=9))


def test_questions_name_the_objects_an_answer_must_look_at():
    from openblip3o.data.shapes.question_targets import named_objects, question_token_mask

    star = ShapeObject(shape="star", color="red", size="large", cx=16, cy=16, radius=8)
    cross = ShapeObject(shape="cross", color="blue", size="large", cx=48, cy=48, radius=8)
    scene = Scene(objects=(star, cross), image_size=64)
    assert named_objects("what color is the cross?", scene) == [1]
    assert named_objects("what shape is the red object?", scene) == [0]
    assert named_objects("how many crosses are there?", scene) == [1]
    assert named_objects("how many shapes are there?", scene) == []
    assert named_objects("is the blue cross right of the red star?", scene) == [1]  # the first noun phrase
    mask = question_token_mask("what color is the cross?", scene, 8)
    owners = token_labels(scene, 8)["shape"]
    assert mask.any() and np.array_equal(mask, owners == SHAPES.index("cross") + 1)


def test_answer_pointer_teaches_one_head_to_look_at_the_named_object():
    torch.manual_seed(0)
    model = BLIP3oPipeline.from_preset("mini", tiny_config()).model.train()
    qwen = model.backbone.model
    before = qwen.config._attn_implementation
    task = UnderstandingTask(model, seed=0, mix=UnderstandingMix(text_rows=0.0, turns=3, pointer_weight=1.0,
                                                                  pointer_layer=1))
    batch = task.batch(0, 8)
    assert len(batch[4]["pointer"]) == 8 and any(m is not None and m.any() for row in batch[4]["pointer"] for m in row)
    first, logs = fit_one_batch(task, batch, "pointer", steps=20)
    assert logs["pointer"] < 0.5 * first and 0.0 <= logs["pointer_mass"] <= 1.0
    task.finish()
    assert qwen.config._attn_implementation == before  # eager only while the stage runs
    with pytest.raises(Exception, match="pointer_weight"):
        UnderstandingTask(model, mix=UnderstandingMix(text_rows=0.0, pointer_weight=1.0, trainable="vision"))
    with pytest.raises(ValueError, match="pointer_head"):
        UnderstandingTask(model, mix=UnderstandingMix(text_rows=0.0, pointer_weight=1.0, pointer_layer=1,
                                                      pointer_head=99))
