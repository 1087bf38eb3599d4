"""Damaged shards (issue 18): `ShardReader` reads past a damaged member header and counts every sample it cannot read;
a `data shapes` rerun remakes a shard whose bytes were damaged after it was written.

Shards are tiny (64 px scenes, ~3 kB a sample), so each test writes its own.
"""

from __future__ import annotations

import json
import os
import random
import tarfile
import warnings

import pytest
import webdataset

from openblip3o.data.shard_writer import write_shapes_shards
from openblip3o.data.shards import CorruptSampleWarning, ShardReader

NUM, SHARD_SIZE = 32, 16
LOST_REASONS = ("damaged_tar", "truncated_tar", "missing_samples", "missing_member", "bad_image", "bad_json", "missing_image",
        "bad_text")


def shard_dir(tmp_path, num=NUM, shard_size=SHARD_SIZE):
    write_shapes_shards(tmp_path, num, shard_size=shard_size, workers=1, progress=False)
    return tmp_path


def member_offsets(path) -> dict[str, tuple[int, int, int]]:
    """{member name: (header offset, data offset, size)}."""
    with tarfile.open(path) as tar:
        return {m.name: (m.offset, m.offset_data, m.size) for m in tar.getmembers()}


def read_all(source):
    reader = ShardReader(source, shuffle=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        keys = [sample.key for sample in reader]
    notes = [str(w.message) for w in caught if issubclass(w.category, CorruptSampleWarning)]
    return keys, reader.skipped, notes


def lost(skipped) -> int:
    return sum(skipped[reason] for reason in LOST_REASONS)


def overwrite(path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as stream:
        stream.seek(offset)
        stream.write(data)


def test_zeroed_member_header_loses_one_sample_not_the_rest(tmp_path):
    """tarfile takes a zero block for the end of the archive: 11 samples of this shard went unread, uncounted."""
    folder = shard_dir(tmp_path)
    path = folder / "shapes-train-000000.tar"
    header = member_offsets(path)["train-000000004.png"][0]
    overwrite(path, header, bytes(512))
    keys, skipped, notes = read_all(folder)
    assert len(keys) == NUM - 1 and "train-000000004" not in keys
    assert keys[4:6] == ["train-000000005", "train-000000006"]  # reading went on after the damage
    assert skipped == {"damaged_tar": 1}
    assert any("train-000000004" in note for note in notes) and any("bytes" in note for note in notes)


def test_random_bytes_mid_file_are_counted_sample_by_sample(tmp_path):
    folder = shard_dir(tmp_path)
    path = folder / "shapes-train-000001.tar"
    offsets = member_offsets(path)
    start = offsets["train-000000020.json"][1] + 100  # inside sample 20, through several samples after it
    overwrite(path, start, random.Random(0).randbytes(4096))
    keys, skipped, _ = read_all(folder)
    assert len(keys) + lost(skipped) == NUM, (keys, skipped)
    assert "train-000000031" in keys  # samples after the damaged stretch are read
    assert "train-000000020" not in keys and skipped["damaged_tar"] >= 2


def test_user_tar_without_manifest_counts_from_the_key_sequence(tmp_path):
    path = tmp_path / "user.tar"
    with webdataset.TarWriter(str(path), encoder=False) as writer:
        for i in range(12):
            writer.write({"__key__": f"sample{i:04d}", "jpg": b"\xff" * 600, "txt": b"x" * 700})  # in this order
    offsets = member_offsets(path)
    start, stop = offsets["sample0003.txt"][1], offsets["sample0007.jpg"][0]  # (headers here carry pax records)
    # From the data of 0003.txt (its headers survive: 0003 reads whole, its text garbled) to 0007's first header:
    # 0004-0006 are gone whole, which only the gap in the keys tells.
    overwrite(path, start, random.Random(1).randbytes(stop - start))
    reader = ShardReader(path, shuffle=False)
    with pytest.warns(CorruptSampleWarning):
        raw = list(reader._raw_samples(0))
    keys = [r["__key__"] for r in raw]
    assert keys[:3] == ["sample0000", "sample0001", "sample0002"] and keys[-5:] == [f"sample{i:04d}" for i in range(7, 12)]
    assert len(keys) == 9 and reader.skipped == {"damaged_tar": 3}, (keys, reader.skipped)


def test_damage_through_the_end_is_counted_from_the_manifest(tmp_path):
    folder = shard_dir(tmp_path)
    path = folder / "shapes-train-000000.tar"
    start = member_offsets(path)["train-000000010.json"][1]
    data = path.read_bytes()
    path.write_bytes(data[:start] + random.Random(2).randbytes(len(data) - start))  # no end marker either
    keys, skipped, notes = read_all(folder)
    assert len(keys) == NUM - 6 and len(keys) + lost(skipped) == NUM, skipped
    assert skipped["missing_samples"] == 5 and any("manifest lists 16" in note for note in notes)


def test_compressor_magic_written_over_the_first_header(tmp_path):
    """Found by test_fuzz_shards: gzip's magic at byte 0 sent a plain tar down the compressed path (11 samples lost)."""
    folder = shard_dir(tmp_path)
    overwrite(folder / "shapes-train-000000.tar", 0, b"\x1f\x8b")
    keys, skipped, _ = read_all(folder)
    assert len(keys) == NUM - 1 and skipped == {"damaged_tar": 1}, skipped


def test_header_change_that_keeps_the_checksum(tmp_path):
    """Found by test_fuzz_shards: tar's checksum is a byte sum, so b"BZh" over b"in-" leaves the first header valid
    under another name. Sample 0 then read as an image without its annotation; now a manifest's shard needs both."""
    folder = shard_dir(tmp_path)
    overwrite(folder / "shapes-train-000000.tar", 3, b"BZh")
    keys, skipped, _ = read_all(folder)
    assert len(keys) == NUM - 1 and "train-000000000" not in keys
    assert skipped == {"missing_member": 2}, skipped  # sample 0's image, and its annotation under the phantom key


def test_compressed_shard_cut_short_is_counted_from_the_manifest(tmp_path):
    import gzip

    folder = shard_dir(tmp_path)
    path = folder / "shapes-train-000000.tar"
    packed = gzip.compress(path.read_bytes())
    path.write_bytes(packed[: len(packed) // 2])
    keys, skipped, _ = read_all(folder)
    assert SHARD_SIZE // 4 < len(keys) < NUM and len(keys) + lost(skipped) == NUM, skipped


def test_intact_shards_warn_about_nothing(tmp_path):
    keys, skipped, notes = read_all(shard_dir(tmp_path))
    assert len(keys) == NUM and not skipped and not notes


# --- 6. a rerun of `data shapes` verifies what it keeps ------------------------------------------------------------
def corrupt_png(path, key: str) -> None:
    """Flip one byte inside a PNG's compressed pixel data: the tar headers stay valid."""
    _, data_offset, size = member_offsets(path)[f"{key}.png"]
    overwrite(path, data_offset + size // 2, bytes([path.read_bytes()[data_offset + size // 2] ^ 0x55]))


@pytest.mark.parametrize("manifest", ["kept", "deleted"], ids=["checksum", "member-check"])
def test_rerun_remakes_a_shard_with_a_corrupted_png(tmp_path, manifest):
    folder = shard_dir(tmp_path)
    path = folder / "shapes-train-000001.tar"
    reference = path.read_bytes()
    corrupt_png(path, "train-000000021")
    assert path.read_bytes() != reference
    if manifest == "deleted":  # as after a killed run, or a folder written before checksums were recorded
        (folder / "manifest.json").unlink()
    write_shapes_shards(folder, NUM, shard_size=SHARD_SIZE, workers=1, progress=False)
    assert path.read_bytes() == reference


def test_rerun_remakes_a_shard_whose_json_changed_but_still_parses(tmp_path):
    folder = shard_dir(tmp_path)
    path = folder / "shapes-train-000000.tar"
    reference = path.read_bytes()
    _, data_offset, size = member_offsets(path)["train-000000003.json"]
    text = reference[data_offset : data_offset + size]
    caption = json.loads(text)["captions"]["long"]
    changed = text.replace(caption.encode(), caption.encode().swapcase())
    assert changed != text and json.loads(changed)
    overwrite(path, data_offset, changed)
    write_shapes_shards(folder, NUM, shard_size=SHARD_SIZE, workers=1, progress=False)
    assert path.read_bytes() == reference


def test_rerun_keeps_intact_shards(tmp_path):
    folder = shard_dir(tmp_path)
    for name in ("manifest.json", None):
        if name:
            (folder / name).unlink()  # no checksums: the member check must accept an intact shard
        paths = sorted(folder.glob("*.tar"))
        for path in paths:
            os.utime(path, ns=(10**18, 10**18))
        write_shapes_shards(folder, NUM, shard_size=SHARD_SIZE, workers=1, progress=False)
        assert all(path.stat().st_mtime_ns == 10**18 for path in paths)
