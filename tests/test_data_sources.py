"""Data sources: shards written by `openblip3o data shapes` train exactly as ShapesWorld on the fly; a shard source
gives the same examples for a position whatever was read before, and a run on shards resumes exactly, decoding only
what is left; user shards with other field names; config errors."""

import io
import json
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from golden_losses import golden_config, stage_logs
from openblip3o.config import ConfigError, merge
from openblip3o.data.shard_writer import write_shapes_shards
from openblip3o.data.shards import ShardReader
from openblip3o.data.sources import FIT, MAIN, TEXT, DataSourceConfig, ShapesSource, ShardSource, build_source
from openblip3o.models.encoders import to_tensor
from openblip3o.training.config import LoopConfig
from openblip3o.training.engine import train
from openblip3o.training.run import run_training
from openblip3o.training.stages.data import SourceState
from tiny import tiny_config

SEED = 5
SCENES, SHARD_SIZE = 256, 64  # the autoencoder fits its statistics on the first 256 training images


@pytest.fixture(scope="module")
def shapes_shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes")
    write_shapes_shards(out, num=SCENES, shard_size=SHARD_SIZE, split="train", seed=SEED, workers=1, progress=False)
    return out


def in_order(path) -> DataSourceConfig:
    return DataSourceConfig(kind="shards", shards=[str(path)], shuffle=False)


def test_shapes_shards_in_file_order_are_the_world(shapes_shards):
    world, shards = ShapesSource("train", SEED), build_source(in_order(shapes_shards), SEED)
    for start, size in ((0, 5), (5, 3), (100, 4)):
        for a, b in zip(world.examples(start, size), shards.examples(start, size)):
            assert a.key == b.key and a.scene == b.scene
            assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
            assert {k: a.annotation[k] for k in ("captions", "prompt", "vqa")} == b.annotation


def test_every_stage_trains_from_shards_exactly_as_from_the_world(shapes_shards, tmp_path):
    """Same seed, same losses, step by step: vae, encoder, decoder, understanding (with per-token vision labels from
    the shards' objects) and generation. Not in the comparison: what a shard source draws from its own other
    streams (the text-only rows, the condition norm's fit), which for the world are scenes 2^30 and 2^32 onwards."""
    shards = in_order(shapes_shards).__dict__
    model = {"backbone": {"condition_norm": "none"}}
    world_config = golden_config(understanding={"text_rows": 0.0, "vision_label_weight": 1.0}, model=model)
    shard_config = merge(world_config, {"data": {stage: shards for stage in ("autoencoder", "understanding",
                                                                             "generation")}})
    logs = {}
    for name, config in (("world", world_config), ("shards", shard_config)):
        run_training(config, tmp_path / name, ["autoencoder", "understanding", "generation"], progress=False,
                     log=lambda *_: None, model_config=merge(tiny_config(), model))
        logs[name] = stage_logs(tmp_path / name)
    assert sorted(logs["world"]) == ["decoder", "encoder", "generation", "understanding", "vae"]
    assert logs["world"] == logs["shards"]


def test_a_shard_position_is_the_same_examples_whatever_was_read_before(shapes_shards):
    """Shuffled, over epoch ends, per stream: in order, skipping ahead (a resumed run, another process's share),
    going back (a stage's final fit) and from a fresh source all agree."""
    config = DataSourceConfig(kind="shards", shards=[str(shapes_shards)], shuffle_buffer=16)
    size, steps = 48, 8  # 384 examples: past the end of the first epoch (256)

    def keys(examples):
        return [e.key for e in examples]

    straight = ShardSource(config, SEED)
    batches = [keys(straight.examples(step * size, size)) for step in range(steps)]
    flat = sum(batches, [])
    assert len(set(flat[:SCENES])) == SCENES and len(set(flat[SCENES:])) == len(flat) - SCENES  # epochs: each once
    assert batches[0] != [f"train-{i:09d}" for i in range(size)]  # shuffled
    assert keys(straight.examples(0, size)) == batches[0]  # back to the start
    resumed = ShardSource(config, SEED)
    assert keys(resumed.examples(6 * size, size)) == batches[6]  # a resume: skips ahead
    assert keys(resumed.examples(7 * size, size)) == batches[7]
    assert keys(resumed.examples(2 * size, size)) == batches[2]  # back again
    other = ShardSource(config, SEED)
    assert keys(other.examples(0, size, TEXT)) != batches[0]  # the streams are apart
    assert keys(other.examples(0, size, FIT)) == keys(ShardSource(config, SEED).examples(0, size, FIT))
    assert keys(ShardSource(config, SEED + 1).examples(0, size, MAIN)) != batches[0]  # and so are seeds


def _user_shard(path, rows):
    with tarfile.open(path, "w") as tar:
        for key, members in rows:
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def _jpg(colour):
    buffer = io.BytesIO()
    Image.new("RGB", (80, 60), colour).save(buffer, format="JPEG")
    return buffer.getvalue()


def test_user_shards_with_configured_fields(tmp_path):
    """BLIP3-o-style `{jpg, txt}` rows (captions only), and json rows with a question/answer pair under other names."""
    _user_shard(tmp_path / "captions.tar", [("a", {"jpg": _jpg("red"), "txt": b"a red picture"})])
    _user_shard(tmp_path / "vqa.tar", [("b", {"jpg": _jpg("blue"), "json": json.dumps(
        {"meta": {"long": "a blue picture", "short": "blue"}, "q": "what colour?", "a": "blue"}).encode()})])
    plain = build_source(DataSourceConfig(kind="shards", shards=[str(tmp_path / "captions.tar")]), 0)
    example = plain.examples(0, 1)[0]
    assert example.scene is None and example.image.size == (80, 60)
    assert example.annotation == {"captions": {"long": "a red picture", "short": "a red picture"},
                                  "prompt": "a red picture", "vqa": []}
    named = DataSourceConfig(kind="shards", shards=[str(tmp_path / "vqa.tar")], long_caption="meta.long",
                             short_caption="meta.short", question="q", answer="a")
    example = build_source(named, 0).examples(0, 1)[0]
    assert example.annotation == {"captions": {"long": "a blue picture", "short": "blue"}, "prompt": "a blue picture",
                                  "vqa": [{"question": "what colour?", "answer": "blue"}]}
    wrong = DataSourceConfig(kind="shards", shards=[str(tmp_path / "vqa.tar")], long_caption="caption")
    with pytest.raises(ValueError, match="no long caption field 'caption'"):
        build_source(wrong, 0).examples(0, 1)


def test_source_config_errors():
    with pytest.raises(ConfigError, match="kind: 'web' is not one of"):
        DataSourceConfig(kind="web")
    with pytest.raises(ConfigError, match="needs at least one folder"):
        DataSourceConfig(kind="shards")
    from openblip3o.training.config import TrainConfig

    with pytest.raises(ConfigError, match="unknown key data.generation.long"):
        merge(TrainConfig(), {"data": {"generation": {"long": "txt"}}})


class CountObjects(SourceState):
    """A toy task on a shard source: regress the object count from the mean colour (noise from the step's generator)."""

    name = "count"

    def __init__(self, source, crash_at: int = -1):
        torch.manual_seed(0)
        self.source, self.crash_at, self.net = source, crash_at, torch.nn.Linear(3, 1)

    def modules(self):
        return {"net": self.net}

    def batch(self, start, size):
        if start == self.crash_at:
            raise KeyboardInterrupt("simulated kill")
        examples = self.source.examples(start, size)
        return (to_tensor([e.image for e in examples], 16).mean((2, 3)),
                torch.tensor([float(len(e.scene.objects)) for e in examples]))

    def loss(self, batch, generator):
        x, y = batch
        noise = 0.01 * torch.randn(len(y), generator=generator)
        loss = torch.nn.functional.mse_loss(self.net(x).squeeze(-1) + noise, y)
        return loss, {}


def test_a_run_on_shards_resumes_to_the_same_losses_reading_only_what_is_left(shapes_shards, tmp_path, monkeypatch):
    config = DataSourceConfig(kind="shards", shards=[str(shapes_shards)], shuffle_buffer=16)
    loop = LoopConfig(steps=10, batch_size=32, warmup_steps=1, log_every=1, checkpoint_every=3)  # 320: past an epoch
    train(CountObjects(ShardSource(config, SEED)), loop, tmp_path / "straight", progress=False)
    with pytest.raises(KeyboardInterrupt):
        train(CountObjects(ShardSource(config, SEED), crash_at=7 * 32), loop, tmp_path / "killed", progress=False)
    decoded = []
    original = ShardReader._decode
    monkeypatch.setattr(ShardReader, "_decode", lambda self, raw: decoded.append(1) or original(self, raw))
    train(CountObjects(ShardSource(config, SEED)), loop, tmp_path / "killed", progress=False)  # from step 6
    assert len(decoded) == (10 - 6) * 32  # the checkpoint's reader state: nothing before step 6 decoded again
    losses = [[json.loads(line)["loss"] for line in (tmp_path / run / "log.jsonl").read_text().splitlines()]
              for run in ("straight", "killed")]
    assert losses[0] == losses[1] and len(losses[0]) == 10
