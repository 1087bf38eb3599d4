"""Official checkpoint import: a synthetic official-layout checkpoint at tiny size converts bit-exactly, and every
layout problem (extra, missing, mis-shaped or structurally unsupported keys) is an error naming the keys."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny import tiny_config
from typer.testing import CliRunner

from openblip3o.cli import app
from openblip3o.config import merge
from openblip3o.convert import convert_official, export_official, official_to_ours, ours_to_official
from openblip3o.convert.official import WEIGHTS_FILE, WEIGHTS_INDEX, read_official_state
from openblip3o.inference.pipeline import BLIP3oPipeline
from openblip3o.models.loading import CheckpointError

# Not in the official checkpoint: the tiny source's learned decoder projection (the official decoder reads the raw
# tokens) and the training-only target encoder (built from the config).
NOT_OFFICIAL = ("decoder.condition.", "target_encoder.")


def official_config():
    # The official decoder cross-attends to the raw tokens: no spatial input, token width == cross-attention width.
    # No projector between the query states and the DiT, and nothing but them in the condition, as in BLIP3-o.
    return merge(tiny_config(), {"decoder": {"spatial_conditioning": False},
                                 "backbone": {"projector": "identity", "condition_embeddings": False}})


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """(tiny pipeline, its weights written under the official names in the official folder layout)."""
    torch.manual_seed(0)
    pipe = BLIP3oPipeline.from_preset("mini", official_config())
    return pipe, export_official(pipe.model, tmp_path_factory.mktemp("official") / "BLIP3o-Model-tiny")


def edited_copy(folder, tmp_path, edit):
    copy = tmp_path / "edited"
    shutil.copytree(folder, copy)
    state = load_file(str(copy / WEIGHTS_FILE))
    edit(state)
    save_file(state, str(copy / WEIGHTS_FILE))
    return copy


def test_key_mapping_uses_official_names():
    cases = {
        "visual.blocks.0.attn.qkv.weight": ("backbone", "model.visual.blocks.0.attn.qkv.weight"),
        "model.layers.3.mlp.up_proj.weight": ("backbone", "model.language_model.layers.3.mlp.up_proj.weight"),
        "model.embed_tokens.weight": ("backbone", "model.language_model.embed_tokens.weight"),
        "model.norm.weight": ("backbone", "model.language_model.norm.weight"),
        "lm_head.weight": ("backbone", "lm_head.weight"),
        "model.latent_queries": ("queries", "queries"),
        "model.dit.model.layers.0.attn2.to_k.weight": ("generator", "layers.0.attn2.to_k.weight"),
        "model.dit.model.time_caption_embed.caption_embedder.1.weight": ("generator", "time_caption_embed.caption_embedder.1.weight"),
    }
    for official, ours in cases.items():
        assert official_to_ours(official) == ours
        assert ours_to_official(*ours) == official
    assert official_to_ours("model.gen_vision_tower.vision_tower.blocks.0.weight") is None
    assert official_to_ours("model.something_new.weight") is None


def test_synthetic_official_checkpoint_converts_bit_exactly(source, tmp_path):
    pipe, official = source
    assert (official / "diffusion-decoder" / "unet" / "config.json").is_file()
    assert "model.latent_queries" in load_file(str(official / WEIGHTS_FILE))
    out = convert_official(official, tmp_path / "converted", official_config())
    loaded = BLIP3oPipeline.from_pretrained(out)
    before, after = pipe.model.state_dict(), loaded.model.state_dict()
    compared = [k for k in before if not k.startswith(NOT_OFFICIAL)]
    assert set(compared) == {k for k in after if not k.startswith(NOT_OFFICIAL)}
    assert compared and all(torch.equal(before[k], after[k]) for k in compared), [
        k for k in compared if not torch.equal(before[k], after[k])
    ]
    assert loaded.model.decoder.condition.mode == "identity"
    assert json.loads((out / "conversion.json").read_text())["added_token_rows"] == 0


def test_extra_and_missing_keys_are_listed(source, tmp_path):
    _, official = source

    def extra_and_missing(state):
        state["model.mystery_head.weight"] = torch.zeros(2)
        del state["model.dit.model.layers.0.gate"]

    with pytest.raises(CheckpointError) as error:
        convert_official(edited_copy(official, tmp_path, extra_and_missing), tmp_path / "out", official_config())
    message = str(error.value)
    assert "unmapped official keys (1): model.mystery_head.weight" in message
    assert "missing generator keys (1): model.dit.model.layers.0.gate" in message
    assert not (tmp_path / "out").exists()


def test_shape_mismatch_and_caption_projection_are_refused(source, tmp_path):
    _, official = source

    def edit(state):
        state["model.latent_queries"] = torch.zeros(1, 3, 5)
        state["model.dit.model.caption_projection.linear_1.weight"] = torch.zeros(4, 4)

    with pytest.raises(CheckpointError) as error:
        convert_official(edited_copy(official, tmp_path, edit), tmp_path / "out", official_config())
    message = str(error.value)
    assert "model.latent_queries" in message and "caption_projection.linear_1.weight" in message
    assert "Linear-GELU-Linear" in message
    with pytest.raises(CheckpointError, match="projector"):
        convert_official(official, tmp_path / "out", merge(official_config(), {"backbone": {"projector": "linear"}}))
    with pytest.raises(CheckpointError, match="condition_embeddings"):
        convert_official(official, tmp_path / "out", merge(official_config(), {"backbone": {"condition_embeddings": True}}))


def test_sharded_checkpoint_is_read(source, tmp_path):
    _, official = source
    state = load_file(str(official / WEIGHTS_FILE))
    keys = sorted(state)
    shards = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    for name, names in shards.items():
        save_file({k: state[k] for k in names}, str(tmp_path / name))
    index = {"weight_map": {k: name for name, names in shards.items() for k in names}}
    (tmp_path / WEIGHTS_INDEX).write_text(json.dumps(index))
    read = read_official_state(tmp_path)
    assert set(read) == set(state) and all(torch.equal(read[k], state[k]) for k in state)


def test_cli_convert_user_errors(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["convert", "--from-official", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "no such folder" in result.output and "Traceback" not in result.output
    result = runner.invoke(app, ["convert", "--from-official", str(tmp_path), "--out", str(tmp_path / "o"),
                                 "--preset", "mini"])
    assert result.exit_code == 2 and "blip3o-8b" in result.output
