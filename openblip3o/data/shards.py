"""WebDataset shards: write ShapesWorld to tars in parallel, and read any image-text tars back.

Writing: each shard is a pure function of (split, seed, index range), so shards are made independently in a
process pool, each written under a temporary name and renamed into place, so a shard is either complete or
absent and a rerun only makes the missing ones.

Reading: one `ShardReader` serves ShapesWorld shards and users' own `{jpg|jpeg|png|webp, txt|json}` tars. Its
order is a deterministic function of (seed, epoch), so a position in it (`state_dict`) is enough to resume.
Damaged data is skipped, counted in `reader.skipped`, and reported with a `CorruptSampleWarning`.
"""

from __future__ import annotations

import glob
import io
import json
import os
import random
import tarfile
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from multiprocessing import Pool
from pathlib import Path

import webdataset
from PIL import Image
from tqdm import tqdm
from webdataset.tariterators import group_by_keys, tar_file_iterator

from .shapes import ShapesWorld, WorldConfig

MANIFEST_NAME = "manifest.json"
TEMP_SUFFIX = ".tmp"  # "x.tar.tmp" never matches "*.tar", so a reader never sees a half-written shard
SHARD_MTIME = 0  # fixed: shards are byte-identical across runs; an int: a float mtime costs a pax header per member
PNG_COMPRESS_LEVEL = 1  # flat-colour 64 px images: level 1 is ~10% faster for a few more bytes than level 6

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")  # in order of preference when a sample has several
TEXT_FIELDS = ("caption", "text", "prompt")  # json fields taken as text when there is no captions.long
TAR_BLOCK = 512
END_OF_ARCHIVE = 2 * TAR_BLOCK  # POSIX tars end with two zero blocks; without them the file was cut short
BUFFER_STREAM_OFFSET = 1 << 32  # the buffer shuffle's generator is independent of the shard-order one
GLOB_CHARS = "*?["


# --------------------------------------------------------------------------------------------------- writing


def shard_name(split: str, index: int) -> str:
    return f"shapes-{split}-{index:06d}.tar"


_worlds: dict[tuple[str, int], ShapesWorld] = {}  # one world per worker process, built on first use


def _world(split: str, seed: int) -> ShapesWorld:
    if (split, seed) not in _worlds:
        _worlds[split, seed] = ShapesWorld(split, seed)
    return _worlds[split, seed]


def encode_example(example) -> dict:
    """The webdataset sample of a ShapesWorld example: PNG image and JSON annotation."""
    buffer = io.BytesIO()
    example.image.save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return {"__key__": example.key, "png": buffer.getvalue(), "json": json.dumps(example.annotation).encode()}


def _shard_is_complete(path: Path, split: str, seed: int, start: int, stop: int) -> bool:
    """Whether an existing shard holds exactly examples [start, stop) of this split and seed.

    Renaming makes shards all-or-nothing, but a shard left by a run with another `num` or seed must still be
    remade; its member count and its first and last annotations tell (headers and two small reads).
    """
    try:
        with tarfile.open(path, "r:") as tar:
            members = [m for m in tar.getmembers() if m.name.endswith(".json")]
            if len(members) != stop - start or len(tar.getmembers()) != 2 * (stop - start):
                return False
            first, last = (json.load(tar.extractfile(m)) for m in (members[0], members[-1]))
        return (first["split"], first["seed"], first["index"], last["index"]) == (split, seed, start, stop - 1)
    except (OSError, tarfile.TarError, ValueError, KeyError, TypeError):  # unreadable or foreign: remake it
        return False


@dataclass(frozen=True)
class _ShardTask:
    out_dir: str
    split: str
    seed: int
    shard: int
    start: int
    stop: int


def _write_shard(task: _ShardTask) -> tuple[str, bool]:
    """Write one shard atomically unless it is already complete; return (name, whether it was written)."""
    split, seed, start, stop = task.split, task.seed, task.start, task.stop
    final = Path(task.out_dir) / shard_name(split, task.shard)
    if _shard_is_complete(final, split, seed, start, stop):
        return final.name, False
    temp = final.with_name(f".{final.name}.{os.getpid()}{TEMP_SUFFIX}")
    world = _world(split, seed)
    try:
        with open(temp, "wb") as stream:
            with webdataset.TarWriter(stream, encoder=False, mtime=SHARD_MTIME) as writer:
                for index in range(start, stop):
                    writer.write(encode_example(world[index]))
            stream.flush()
            os.fsync(stream.fileno())  # the data must be on disk before the name says the shard is complete
        os.replace(temp, final)
    finally:
        temp.unlink(missing_ok=True)
    return final.name, True


def write_shapes_shards(
    out_dir: str | os.PathLike,
    num: int,
    shard_size: int = 1000,
    split: str = "train",
    seed: int = 0,
    workers: int | None = None,
    progress: bool = True,
) -> dict:
    """Write ShapesWorld examples [0, num) as `out_dir/shapes-{split}-NNNNNN.tar`; return the manifest.

    Shard j holds examples [j*shard_size, min(num, (j+1)*shard_size)), each as `{key}.png` + `{key}.json`.
    Resumable: complete shards are kept, missing or mismatched ones (re)written. One writer per directory.
    """
    if num <= 0 or shard_size <= 0:
        raise ValueError(f"num and shard_size must be positive, got num={num}, shard_size={shard_size}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(f".shapes-{split}-*{TEMP_SUFFIX}"):  # left by a killed run
        stale.unlink(missing_ok=True)
    tasks = [
        _ShardTask(str(out), split, seed, shard, start, min(num, start + shard_size))
        for shard, start in enumerate(range(0, num, shard_size))
    ]
    workers = max(1, min(workers or os.cpu_count() or 1, len(tasks)))
    bar = tqdm(total=len(tasks), desc=f"shapes {split} shards", unit="shard", disable=not progress)
    kept = 0
    with bar:
        with Pool(workers) if workers > 1 else nullcontext() as pool:  # no pool for one worker: easier to debug
            for _, written in pool.imap_unordered(_write_shard, tasks) if pool else map(_write_shard, tasks):
                kept += not written
                bar.set_postfix(kept=kept, refresh=False)  # shards found complete from an earlier run
                bar.update()
    manifest = {
        "split": split,
        "seed": seed,
        "num": num,
        "shard_size": shard_size,
        "shards": [shard_name(split, task.shard) for task in tasks],
        "image_size": WorldConfig().image_size,
    }
    temp = out / f".{MANIFEST_NAME}{TEMP_SUFFIX}"
    temp.write_text(json.dumps(manifest, indent=2))
    os.replace(temp, out / MANIFEST_NAME)
    return manifest


# --------------------------------------------------------------------------------------------------- reading


class CorruptSampleWarning(UserWarning):
    """A sample or shard was skipped because its data is damaged."""


class _TruncatedShard(Exception):
    """Internal: a shard ended before its end-of-archive marker."""


@dataclass
class Sample:
    key: str
    image: Image.Image  # RGB
    text: str  # the txt member, else json captions.long, else json caption/text/prompt, else ""
    meta: dict  # the json member, or {}
    source: str  # shard file name


def resolve_shards(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> list[str]:
    """Tar paths from a directory (its *.tar, sorted), a glob (sorted), a file, or a list of any of these."""
    if isinstance(paths, (str, os.PathLike)):
        path = os.fspath(paths)
        if os.path.isdir(path):
            found = sorted(glob.glob(os.path.join(glob.escape(path), "*.tar")))
            if not found:
                raise FileNotFoundError(f"no .tar shards in directory {path}")
            return found
        if any(char in path for char in GLOB_CHARS) and not os.path.exists(path):
            found = sorted(glob.glob(path))
            if not found:
                raise FileNotFoundError(f"no files match the pattern {path}")
            return found
        if not os.path.isfile(path):
            raise FileNotFoundError(f"shard not found: {path}")
        return [path]
    found = [shard for entry in paths for shard in resolve_shards(entry)]
    if not found:
        raise ValueError("no shards given: the list of paths is empty")
    return found


def _buffer_shuffle(items: Iterable, size: int, rng: random.Random) -> Iterator:
    """Approximate shuffle in bounded memory: each item waits in a buffer of `size` and leaves at random."""
    if size == 0:
        yield from items
        return
    buffer: list = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        slot = rng.randrange(size)
        yield buffer[slot]
        buffer[slot] = item
    rng.shuffle(buffer)
    yield from buffer


def _has_end_marker(stream) -> bool:
    """Whether an uncompressed tar ends with its zero blocks (tarfile silently stops at a cut between members)."""
    size = os.fstat(stream.fileno()).st_size
    if size < END_OF_ARCHIVE or size % TAR_BLOCK:
        return False
    return not any(os.pread(stream.fileno(), END_OF_ARCHIVE, size - END_OF_ARCHIVE))


class ShardReader:
    """Iterate `Sample`s from webdataset tars in a deterministic, resumable, seeded order.

    The order of epoch e: shards shuffled with `random.Random(seed + e)`, then samples passed through a shuffle
    buffer with its own seeded generator (`shuffle=False`: file order). `state_dict()` records the epoch and
    how many raw samples of it were consumed; a reader given that state skips that many raw samples (before
    any image decoding) and goes on exactly where the other stopped. Finishing an epoch starts the next.
    One iteration at a time per reader: iterators share the position.
    """

    def __init__(self, paths, seed: int = 0, shuffle_buffer: int = 1000, shuffle: bool = True, epoch: int = 0):
        if shuffle_buffer < 0:
            raise ValueError(f"shuffle_buffer must be >= 0, got {shuffle_buffer}")
        self.shards = resolve_shards(paths)
        self.seed, self.shuffle_buffer, self.shuffle = seed, shuffle_buffer, shuffle
        self.epoch, self.position = epoch, 0
        self.skipped: Counter = Counter()  # reason -> count, over this reader's lifetime

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])

    def __iter__(self) -> Iterator[Sample]:
        already_read = self.position
        for index, raw in enumerate(self._raw_samples(self.epoch)):
            if index < already_read:
                continue  # resuming: these were consumed before the state was saved
            self.position = index + 1
            sample = self._decode(raw)
            if sample is not None:
                yield sample
        self.epoch, self.position = self.epoch + 1, 0

    def _raw_samples(self, epoch: int) -> Iterator[dict]:
        """This epoch's undecoded samples (dicts of member bytes), in their deterministic order."""
        shards = list(self.shards)
        if not self.shuffle:
            for shard in shards:
                yield from self._read_shard(shard)
            return
        random.Random(self.seed + epoch).shuffle(shards)
        stream = (raw for shard in shards for raw in self._read_shard(shard))
        rng = random.Random(self.seed + epoch + BUFFER_STREAM_OFFSET)
        yield from _buffer_shuffle(stream, self.shuffle_buffer, rng)

    def _read_shard(self, path: str) -> Iterator[dict]:
        """Group one tar's members into samples; a damaged tar yields what precedes the damage."""
        name = os.path.basename(path)
        last_member = "<none>"

        def members(stream) -> Iterator[dict]:
            nonlocal last_member
            for member in tar_file_iterator(stream):  # raises tarfile.ReadError on a cut inside a member
                last_member = member["fname"]
                yield member | {"__url__": name}
            if path.endswith(".tar") and not _has_end_marker(stream):
                raise _TruncatedShard("the file ends without the end-of-archive marker")

        def on_duplicate(error: Exception) -> bool:
            self._skip("duplicate_member", name, "?", error)
            return True  # keep the first copy, go on

        try:
            with open(path, "rb") as stream:
                yield from group_by_keys(members(stream), handler=on_duplicate)
        except (tarfile.TarError, EOFError, _TruncatedShard) as error:
            # Earlier samples were already yielded; the one being assembled at the cut may lack members, so
            # it is dropped and covered by this count rather than returned incomplete.
            self._skip("truncated_tar", name, f"after member {last_member}", f"{error}; sample in progress dropped")

    def _decode(self, raw: dict) -> Sample | None:
        """Decode one raw sample, or count and warn about why it cannot be used and return None."""
        key, source = raw["__key__"], raw["__url__"]
        image_ext = next((ext for ext in IMAGE_EXTENSIONS if ext in raw), None)
        if image_ext is None:
            return self._skip("missing_image", source, key, f"members: {sorted(k for k in raw if k[:2] != '__')}")
        meta: dict = {}
        if "json" in raw:
            try:
                meta = json.loads(raw["json"])
            except ValueError as error:  # includes UnicodeDecodeError
                return self._skip("bad_json", source, key, error)
            if not isinstance(meta, dict):
                return self._skip("bad_json", source, key, f"expected an object, got {type(meta).__name__}")
        text = ""
        if "txt" in raw:
            try:
                text = raw["txt"].decode("utf-8").strip()
            except UnicodeDecodeError as error:
                return self._skip("bad_text", source, key, error)
        elif isinstance(meta.get("captions"), dict) and "long" in meta["captions"]:
            text = str(meta["captions"]["long"])
        else:
            text = next((str(meta[field]) for field in TEXT_FIELDS if field in meta), "")
        try:
            with Image.open(io.BytesIO(raw[image_ext])) as opened:
                image = opened.convert("RGB")  # forces a full decode, so truncated data fails here
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
            return self._skip("bad_image", source, key, error)
        return Sample(key=key, image=image, text=text, meta=meta, source=source)

    def _skip(self, reason: str, shard: str, key: str, detail) -> None:
        self.skipped[reason] += 1
        warnings.warn(f"skipped ({reason}) in shard {shard}, key {key}: {detail}", CorruptSampleWarning, stacklevel=2)
