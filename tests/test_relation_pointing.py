"""Relation questions: positions on the image tokens, both objects looked up, and the pair's relations named."""

import numpy as np
import pytest
import torch
from PIL import Image

from openblip3o.config import ConfigError
from openblip3o.data.shapes import Scene, ShapeObject
from openblip3o.data.shapes.question_targets import named_objects, question_token_mask
from openblip3o.inference.pipeline import BLIP3oPipeline
from openblip3o.models.vision_position import sincos_grid
from openblip3o.training.config import UnderstandingMix
from openblip3o.training.stages.relation_pair import UNKNOWN, asked_relation, pair_relations
from openblip3o.training.stages.understanding import UnderstandingTask
from test_vision_labels import fit_one_batch
from tiny import tiny_config

STAR = ShapeObject(shape="star", color="red", size="large", cx=12, cy=40, radius=8)
CROSS = ShapeObject(shape="cross", color="blue", size="large", cx=52, cy=44, radius=8)
SCENE = Scene(objects=(STAR, CROSS), image_size=64)


def test_relation_questions_name_both_objects_and_how_they_lie():
    question = "is the blue cross left of the red star?"
    assert named_objects(question, SCENE, "relation_first") == [1]
    assert named_objects(question, SCENE, "relation_second") == [0]
    assert named_objects("what color is the star?", SCENE, "relation_first") == []  # not a relation question
    assert named_objects("what color is the star?", SCENE, "first") == [0]
    assert question_token_mask(question, SCENE, 8, "relation_second").any()
    with pytest.raises(ValueError, match="phrase"):
        named_objects(question, SCENE, "third")
    # The cross lies clearly right of the star; vertically the two are level (neither above nor below).
    assert pair_relations(question, SCENE) == [0.0, 1.0, UNKNOWN, UNKNOWN]
    assert pair_relations("is the red star left of the blue cross?", SCENE) == [1.0, 0.0, UNKNOWN, UNKNOWN]
    assert pair_relations("how many shapes are there?", SCENE) is None
    assert asked_relation(question) == 0 and asked_relation("is the red star below the blue cross?") == 3
    assert asked_relation("what color is the star?") is None


def _merged_tokens(pipe, image: Image.Image) -> torch.Tensor:
    backbone = pipe.model.backbone
    batch = backbone.processor.image_processor(images=[image], return_tensors="pt")
    with torch.no_grad():
        return backbone.model.model.visual(batch["pixel_values"], grid_thw=batch["image_grid_thw"]).pooler_output


def test_vision_position_gives_each_merged_token_its_row_and_column():
    black = Image.new("RGB", (64, 64))
    torch.manual_seed(0)
    plain = BLIP3oPipeline.from_preset("mini", tiny_config())
    tokens = _merged_tokens(plain, black)
    assert torch.allclose(tokens, tokens[:1].expand_as(tokens), atol=1e-5)  # rotary only: every place looks alike
    torch.manual_seed(0)
    placed = BLIP3oPipeline.from_preset("mini", tiny_config(backbone={"vision_position": "sincos"}))
    grid = placed.model.backbone.vision_grid
    added = _merged_tokens(placed, black) - tokens
    table = sincos_grid(added.shape[1], grid, grid) * placed.model.backbone.cfg.vision_position_scale
    assert torch.allclose(added, table, atol=1e-4)
    nearest = torch.cdist(added, table).argmin(dim=1)
    assert torch.equal(nearest, torch.arange(grid * grid))  # every token's place is recoverable
    with pytest.raises(ConfigError, match="vision_position"):
        BLIP3oPipeline.from_preset("mini", tiny_config(backbone={"vision_position": "learned"}))


def test_vision_position_survives_save_and_load(tmp_path):
    torch.manual_seed(0)
    pipe = BLIP3oPipeline.from_preset("mini", tiny_config(backbone={"vision_position": "sincos"}))
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    pipe.save_pretrained(tmp_path)
    loaded = BLIP3oPipeline.from_pretrained(tmp_path)
    assert loaded.model.backbone.cfg.vision_position == "sincos"
    assert torch.allclose(_merged_tokens(pipe, image), _merged_tokens(loaded, image), atol=1e-5)


def test_relation_pointers_and_pair_labels_train_the_language_model():
    torch.manual_seed(0)
    model = BLIP3oPipeline.from_preset("mini", tiny_config()).model.train()
    qwen = model.backbone.model
    before = qwen.config._attn_implementation
    mix = UnderstandingMix(text_rows=0.0, turns=5, relation_pointer_weight=1.0, relation_pair_weight=1.0,
                           relation_asked_weight=1.0, relation_pointer_layer=1, relation_pointer_heads=(0, 1))
    task = UnderstandingTask(model, seed=0, mix=mix)
    assert "relation_pair_head" in task.modules()
    batch = task.batch(0, 16)
    pairs = [t for row in batch[4]["relation_pair"] for t in row if t is not None]
    assert pairs and all(len(bits) == 4 and 0 <= asked < 4 and bits[asked] != UNKNOWN for bits, asked in pairs)
    second = [m for row in batch[4]["relation_pointer_1"] for m in row if m is not None and m.any()]
    assert len(second) == len(pairs)  # the second lookup is asked of relation questions only
    first, logs = fit_one_batch(task, batch, "relation_pair", steps=30)
    assert logs["relation_pair"] < 0.5 * first and logs["relation_pair_acc"] >= 0.75
    assert logs["relation_asked_acc"] == 1.0
    assert 0.0 <= logs["relation_pointer_0_mass"] <= 1.0 and 0.0 <= logs["relation_pointer_1_mass"] <= 1.0
    task.finish()
    assert qwen.config._attn_implementation == before
    for name in ("relation_pointer_weight", "relation_pair_weight"):
        with pytest.raises(ConfigError, match=name):
            UnderstandingTask(model, mix=UnderstandingMix(text_rows=0.0, trainable="vision", **{name: 1.0}))
    with pytest.raises(ValueError, match="relation_asked_weight"):
        UnderstandingTask(model, mix=UnderstandingMix(text_rows=0.0, relation_pair_weight=1.0,
                                                      relation_asked_weight=-1.0, relation_pointer_layer=1))
    with pytest.raises(ValueError, match="relation_pointer_layer"):
        UnderstandingTask(model, mix=UnderstandingMix(text_rows=0.0, relation_pair_weight=1.0,
                                                      relation_pointer_layer=9))
