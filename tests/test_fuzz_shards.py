"""Hypothesis over damaged shards (issue 18): whatever happens to a shard's bytes (blocks zeroed, random bytes written
anywhere, the file cut short, several of these), `ShardReader` raises nothing, every sample of the shard is either
read or counted in `reader.skipped` (the manifest beside the shard says how many there are), and every sample read is
whole (its own annotation with it).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import warnings
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from openblip3o.data.shard_writer import write_shapes_shards
from openblip3o.data.shards import ShardReader

NUM = 12
NAME = "shapes-train-000000.tar"
LOST = ("damaged_tar", "truncated_tar", "missing_samples", "missing_member", "bad_image", "bad_json", "missing_image",
        "bad_text")
SETTINGS = dict(deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("pristine")
    write_shapes_shards(folder, NUM, shard_size=NUM, workers=1, progress=False)
    return folder


@st.composite
def damage(draw, size: int):
    """One change to a file of `size` bytes: (kind, offset, payload or new length)."""
    kind = draw(st.sampled_from(["zero_blocks", "random_bytes", "cut"]))
    if kind == "zero_blocks":  # a zeroed header (or more), block-aligned as tar headers are
        first = draw(st.integers(0, size // 512 - 1))
        return kind, first * 512, bytes(512 * draw(st.integers(1, 8)))
    if kind == "random_bytes":
        offset = draw(st.integers(0, size - 1))
        return kind, offset, draw(st.binary(min_size=1, max_size=4096))
    return kind, draw(st.integers(0, size)), None


def damaged(data: bytes, changes) -> bytes:
    for kind, offset, payload in changes:
        if kind == "cut":
            data = data[:offset]
        else:
            payload = payload[: max(0, len(data) - offset)]
            data = data[:offset] + payload + data[offset + len(payload):]
    return data


def read_everything(folder: Path):
    reader = ShardReader(folder, shuffle=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        samples = list(reader)
    for sample in samples:  # a sample read is a whole one: its own annotation, not one damage left it without
        assert sample.meta.get("index") == int(sample.key.rsplit("-", 1)[1]), (sample.key, sample.meta)
    return [sample.key for sample in samples], reader.skipped


def check_damaged_shard(pristine: Path, data) -> None:
    original = (pristine / NAME).read_bytes()
    changes = data.draw(st.lists(damage(len(original)), min_size=1, max_size=3))
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        shutil.copy(pristine / "manifest.json", folder)
        (folder / NAME).write_bytes(damaged(original, changes))
        keys, skipped = read_everything(folder)
    counted = sum(skipped[reason] for reason in LOST)
    event(f"{len(keys)} read")
    # Every sample read or counted. A count can exceed the shard by one per change: tar's checksum is a byte sum, so
    # a change that keeps it (b"BZh" over b"in-") gives a member a phantom key, whose lone member is counted too.
    assert NUM <= len(keys) + counted <= NUM + len(changes), (changes, keys, dict(skipped))
    assert len(keys) < NUM or not skipped, skipped  # nothing counted where nothing was lost
    assert len(set(keys)) == len(keys)  # nothing read twice
    assert set(skipped) <= set(LOST) | {"duplicate_member"}, skipped


@settings(max_examples=500, **SETTINGS)
@given(data=st.data())
def test_every_sample_of_a_damaged_shard_is_read_or_counted(pristine, data):
    check_damaged_shard(pristine, data)


@pytest.mark.slow
@settings(max_examples=10_000, **SETTINGS)
@given(data=st.data())
def test_every_sample_of_a_damaged_shard_is_read_or_counted_long(pristine, data):
    check_damaged_shard(pristine, data)


def test_the_manifest_is_the_one_the_reader_uses(pristine):
    manifest = json.loads((pristine / "manifest.json").read_text())
    assert manifest["shards"] == [NAME] and manifest["num"] == NUM
