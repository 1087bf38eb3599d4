"""Shard writing and reading: round trip, seeded order, resuming, damaged data, resumable writing."""

from __future__ import annotations

import hashlib
import io
import json
import os

import pytest
import webdataset
from PIL import Image

from openblip3o.data.shapes import ShapesWorld
from openblip3o.data.shard_writer import write_shapes_shards
from openblip3o.data.shards import CorruptSampleWarning, ShardReader

NUM, SHARD_SIZE, SEED = 40, 16, 3
OLD_MTIME_NS = 1_000_000_000 * 10**9  # a fixed past time: any rewrite moves a shard's mtime off it


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes")
    write_shapes_shards(out, NUM, shard_size=SHARD_SIZE, seed=SEED, workers=2, progress=False)
    return out


def keys_of(reader) -> list[str]:
    return [sample.key for sample in reader]


def test_write_layout_and_manifest(shapes_dir):
    manifest = json.loads((shapes_dir / "manifest.json").read_text())
    checksums = manifest.pop("sha256")  # what a rerun checks each shard against
    assert checksums == {name: hashlib.sha256((shapes_dir / name).read_bytes()).hexdigest() for name in manifest["shards"]}
    assert manifest == {
        "split": "train", "seed": SEED, "num": NUM, "shard_size": SHARD_SIZE, "image_size": 64,
        "shards": ["shapes-train-000000.tar", "shapes-train-000001.tar", "shapes-train-000002.tar"],
    }
    assert sorted(p.name for p in shapes_dir.iterdir()) == sorted(manifest["shards"] + ["manifest.json"])
    counts = {}
    for sample in ShardReader(shapes_dir, shuffle=False):
        counts[sample.source] = counts.get(sample.source, 0) + 1
    assert counts == {"shapes-train-000000.tar": 16, "shapes-train-000001.tar": 16, "shapes-train-000002.tar": 8}


def test_round_trip_matches_the_world(shapes_dir):
    world = ShapesWorld("train", SEED)
    samples = list(ShardReader(shapes_dir, shuffle=False))
    assert [s.key for s in samples] == [world[i].key for i in range(NUM)]
    for index in (0, 17, NUM - 1):
        sample, example = samples[index], world[index]
        assert sample.image.mode == "RGB" and sample.image.size == (64, 64)
        assert sample.image.tobytes() == example.image.tobytes()  # PNG is lossless
        assert sample.text == example.annotation["captions"]["long"]
        assert sample.meta == example.annotation


def test_paths_as_glob_list_and_errors(shapes_dir, tmp_path):
    shards = sorted(str(p) for p in shapes_dir.glob("*.tar"))
    assert ShardReader(str(shapes_dir / "*-000001.tar")).shards == [shards[1]]
    assert ShardReader(shards[::-1]).shards == shards[::-1]
    with pytest.raises(FileNotFoundError, match="nope.tar"):
        ShardReader(str(tmp_path / "nope.tar"))
    with pytest.raises(FileNotFoundError, match="no .tar shards"):
        ShardReader(tmp_path)
    with pytest.raises(FileNotFoundError, match="no files match"):
        ShardReader(str(tmp_path / "*.tar"))


def test_seeded_shuffle(shapes_dir):
    unshuffled = keys_of(ShardReader(shapes_dir, shuffle=False))
    first = keys_of(ShardReader(shapes_dir, seed=1, shuffle_buffer=8))
    assert first == keys_of(ShardReader(shapes_dir, seed=1, shuffle_buffer=8))
    assert first != keys_of(ShardReader(shapes_dir, seed=2, shuffle_buffer=8))
    assert first != unshuffled and sorted(first) == sorted(unshuffled) and len(set(first)) == NUM


def test_shard_order_is_shuffled_per_seed(shapes_dir):
    """With no buffer, samples come shard by shard in file order within a shard; only the shard order moves."""
    unshuffled = keys_of(ShardReader(shapes_dir, shuffle=False))
    blocks = [unshuffled[:16], unshuffled[16:32], unshuffled[32:]]
    orders = set()
    for seed in range(6):
        keys = keys_of(ShardReader(shapes_dir, seed=seed, shuffle_buffer=0))
        order = tuple(sorted(range(3), key=lambda b: keys.index(blocks[b][0])))
        assert keys == [key for b in order for key in blocks[b]]
        orders.add(order)
    assert len(orders) > 1


def test_epochs_advance_and_reshuffle(shapes_dir):
    reader = ShardReader(shapes_dir, seed=1, shuffle_buffer=8)
    epoch0, epoch1 = keys_of(reader), keys_of(reader)
    assert reader.state_dict() == {"epoch": 2, "position": 0}
    assert epoch1 == keys_of(ShardReader(shapes_dir, seed=1, shuffle_buffer=8, epoch=1))
    assert epoch0 != epoch1 and sorted(epoch0) == sorted(epoch1)


@pytest.mark.parametrize("stop_after", [1, 13, NUM - 1])
def test_resume_continues_exactly(shapes_dir, stop_after):
    full = keys_of(ShardReader(shapes_dir, seed=5, shuffle_buffer=8))
    reader = ShardReader(shapes_dir, seed=5, shuffle_buffer=8)
    iterator = iter(reader)
    head = [next(iterator).key for _ in range(stop_after)]
    state = reader.state_dict()
    assert state == {"epoch": 0, "position": stop_after}
    resumed = ShardReader(shapes_dir, seed=5, shuffle_buffer=8)
    resumed.load_state_dict(json.loads(json.dumps(state)))  # states survive a JSON checkpoint
    assert head + keys_of(resumed) == full
    assert resumed.state_dict() == {"epoch": 1, "position": 0}


def jpeg_bytes(color) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buffer, format="JPEG")
    return buffer.getvalue()


def write_user_tar(path, samples):
    with webdataset.TarWriter(str(path), encoder=False) as writer:
        for sample in samples:
            writer.write(sample)


def test_user_tar_with_damaged_samples(tmp_path):
    path = tmp_path / "user.tar"
    write_user_tar(path, [
        {"__key__": "good0", "jpg": jpeg_bytes("red"), "txt": b"a red square"},
        {"__key__": "garbage", "jpg": b"this is not an image", "txt": b"broken"},
        {"__key__": "cut", "jpg": jpeg_bytes("blue")[:40], "txt": b"truncated jpeg"},
        {"__key__": "badjson", "png": jpeg_bytes("green"), "json": b"{not json"},
        {"__key__": "noimage", "txt": b"text without a picture"},
        {"__key__": "good1", "jpeg": jpeg_bytes("white"), "json": b'{"caption": "a white square"}'},
        {"__key__": "good2", "webp": jpeg_bytes("black"), "json": b'{"prompt": "p", "text": "t"}'},
    ])
    reader = ShardReader(path, shuffle=False)
    with pytest.warns(CorruptSampleWarning) as caught:
        samples = list(reader)
    assert [(s.key, s.text) for s in samples] == [("good0", "a red square"), ("good1", "a white square"), ("good2", "t")]
    assert samples[0].image.getpixel((4, 4))[0] > 200 and samples[0].source == "user.tar"
    assert samples[1].meta == {"caption": "a white square"}
    assert reader.skipped == {"bad_image": 2, "bad_json": 1, "missing_image": 1}
    messages = " ".join(str(w.message) for w in caught)
    for key in ("garbage", "cut", "badjson", "noimage"):
        assert f"shard user.tar, key {key}" in messages


def test_truncated_tar_keeps_earlier_samples(tmp_path):
    path = tmp_path / "cut.tar"
    write_user_tar(path, [{"__key__": f"s{i}", "jpg": jpeg_bytes("red"), "txt": f"{i}".encode()} for i in range(10)])
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    intact = tmp_path / "intact.tar"
    write_user_tar(intact, [{"__key__": "after", "jpg": jpeg_bytes("red"), "txt": b"x"}])
    reader = ShardReader([path, intact], shuffle=False)
    with pytest.warns(CorruptSampleWarning, match="truncated_tar.*cut.tar"):
        keys = keys_of(reader)
    assert keys[-1] == "after"  # the reader went on to the next shard
    assert 2 <= len(keys) - 1 < 10 and keys[:-1] == [f"s{i}" for i in range(len(keys) - 1)]
    assert reader.skipped == {"truncated_tar": 1}


def test_tar_cut_between_members_is_detected(tmp_path):
    """tarfile itself ends quietly at a cut on a header boundary; the missing end marker gives it away."""
    path = tmp_path / "cut.tar"
    write_user_tar(path, [{"__key__": f"s{i}", "txt": b"x" * 100, "jpg": jpeg_bytes("red")} for i in range(4)])
    data = path.read_bytes()
    header = data.index(b"s2.txt") // 512 * 512  # members are written jpg then txt: s2 keeps only its image
    path.write_bytes(data[:header])
    reader = ShardReader(path, shuffle=False)
    with pytest.warns(CorruptSampleWarning, match="truncated_tar.*after member s2.jpg"):
        keys = keys_of(reader)
    assert keys == ["s0", "s1"]  # the half of s2 before the cut is dropped with the truncation, not returned
    assert reader.skipped == {"truncated_tar": 1}


def test_write_is_resumable_and_atomic(tmp_path):
    manifest = write_shapes_shards(tmp_path, NUM, shard_size=SHARD_SIZE, workers=1, progress=False)
    paths = [tmp_path / name for name in manifest["shards"]]
    for path in paths:
        os.utime(path, ns=(OLD_MTIME_NS, OLD_MTIME_NS))
    reference = paths[1].read_bytes()
    paths[1].unlink()
    (tmp_path / ".shapes-train-000002.tar.999.tmp").write_bytes(b"half a shard from a killed run")
    assert write_shapes_shards(tmp_path, NUM, shard_size=SHARD_SIZE, workers=1, progress=False) == manifest
    assert [p.stat().st_mtime_ns == OLD_MTIME_NS for p in paths] == [True, False, True]
    assert paths[1].read_bytes() == reference  # shards are reproducible byte for byte
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*.tmp"))


def test_write_remakes_shards_of_another_run(tmp_path):
    write_shapes_shards(tmp_path, 20, shard_size=SHARD_SIZE, workers=1, progress=False)  # last shard: 4 samples
    last = tmp_path / "shapes-train-000001.tar"
    os.utime(last, ns=(OLD_MTIME_NS, OLD_MTIME_NS))
    write_shapes_shards(tmp_path, 24, shard_size=SHARD_SIZE, workers=1, progress=False)
    assert last.stat().st_mtime_ns != OLD_MTIME_NS
    assert len(list(ShardReader(last))) == 8
    write_shapes_shards(tmp_path, 24, shard_size=SHARD_SIZE, seed=9, workers=1, progress=False)
    assert {s.meta["seed"] for s in ShardReader(tmp_path)} == {9}


def test_write_rejects_bad_sizes(tmp_path):
    with pytest.raises(ValueError):
        write_shapes_shards(tmp_path, 0, progress=False)
    with pytest.raises(ValueError):
        write_shapes_shards(tmp_path, 10, shard_size=0, progress=False)
