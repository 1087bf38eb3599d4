"""Write ShapesWorld to WebDataset shards in parallel (`openblip3o data shapes`).

Each shard is a pure function of (split, seed, index range), so shards are made independently in a process pool,
each written under a temporary name and renamed into place, so a shard is either complete or absent and a rerun only
makes the missing ones. The manifest records each shard's SHA-256; a rerun keeps a shard only if it matches (or,
unrecorded, if every member reads back intact), so a shard damaged since is remade. Reading is `shards.ShardReader`.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import zlib
from contextlib import nullcontext
from dataclasses import dataclass
from multiprocessing import Pool
from pathlib import Path

import webdataset
from PIL import Image
from tqdm import tqdm

from .shapes import ShapesWorld, WorldConfig
from .shards import MANIFEST_NAME, SCAN_CHUNK, _plain_tar_members, shard_name

TEMP_SUFFIX = ".tmp"  # "x.tar.tmp" never matches "*.tar", so a reader never sees a half-written shard
SHARD_MTIME = 0  # fixed: shards are byte-identical across runs; an int: a float mtime costs a pax header per member
PNG_COMPRESS_LEVEL = 1  # flat-colour 64 px images: level 1 is ~10% faster for a few more bytes than level 6


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


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(SCAN_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _members_are_intact(path: Path, split: str, seed: int, start: int, stop: int) -> bool:
    """Whether a shard without a recorded checksum holds examples [start, stop) of this split and seed, every
    member readable: tar headers, each PNG's chunk CRCs and pixels, each JSON and its split, seed and index."""
    try:
        with tarfile.open(path, "r:") as tar:
            members = tar.getmembers()
            if len(members) != 2 * (stop - start) or not all(m.isfile() for m in members):
                return False
            data = {m.name: tar.extractfile(m).read() for m in members}
        keys = list(dict.fromkeys(name.rsplit(".", 1)[0] for name in data))
        if len(keys) != stop - start:
            return False
        for index, key in zip(range(start, stop), keys):
            meta = json.loads(data[f"{key}.json"])
            if (meta["split"], meta["seed"], meta["index"]) != (split, seed, index):
                return False
            with Image.open(io.BytesIO(data[f"{key}.png"])) as image:
                image.verify()  # every chunk's CRC, IDAT included (load() skips the IDAT CRCs)
            with Image.open(io.BytesIO(data[f"{key}.png"])) as image:
                image.load()
        return _plain_tar_is_complete(path)
    except (OSError, tarfile.TarError, ValueError, KeyError, TypeError, SyntaxError, EOFError, zlib.error):
        return False  # unreadable, damaged or foreign: remake it


def _plain_tar_is_complete(path: Path) -> bool:
    """Whether a tar reads to its end-of-archive marker with no damaged stretch on the way."""
    with open(path, "rb") as stream:
        return not any(kind == "damage" for kind, *_ in _plain_tar_members(stream))


def _shard_is_complete(path: Path, task: "_ShardTask") -> bool:
    """Whether an existing shard holds exactly examples [task.start, task.stop) of this split and seed, intact.

    Renaming makes shards all-or-nothing, but a shard may have been damaged since it was written, or left by a run
    with another `num` or seed. The manifest records each finished shard's SHA-256: a shard it records is checked
    against that. A shard it does not record (finished by a killed run, or written before checksums were kept) is
    checked member by member (`_members_are_intact`), the check that catches a corrupted PNG.
    """
    if not path.is_file():
        return False
    if task.sha256 is not None:
        return _file_sha256(path) == task.sha256
    return _members_are_intact(path, task.split, task.seed, task.start, task.stop)


@dataclass(frozen=True)
class _ShardTask:
    out_dir: str
    split: str
    seed: int
    shard: int
    start: int
    stop: int
    sha256: str | None = None  # recorded by the manifest of an earlier run that wrote this very range


def _write_shard(task: _ShardTask) -> tuple[str, bool, str]:
    """Write one shard atomically unless it is already complete; return (name, whether it was written, SHA-256)."""
    split, seed, start, stop = task.split, task.seed, task.start, task.stop
    final = Path(task.out_dir) / shard_name(split, task.shard)
    if _shard_is_complete(final, task):
        return final.name, False, task.sha256 or _file_sha256(final)
    temp = final.with_name(f".{final.name}.{os.getpid()}{TEMP_SUFFIX}")
    world = _world(split, seed)
    try:
        with open(temp, "wb") as stream:
            with webdataset.TarWriter(stream, encoder=False, mtime=SHARD_MTIME) as writer:
                for index in range(start, stop):
                    writer.write(encode_example(world[index]))
            stream.flush()
            os.fsync(stream.fileno())  # the data must be on disk before the name says the shard is complete
        digest = _file_sha256(temp)
        os.replace(temp, final)
    finally:
        temp.unlink(missing_ok=True)
    return final.name, True, digest


def _recorded_checksums(out: Path, split: str, seed: int) -> dict[str, tuple[int, int, str]]:
    """{shard name: (start, stop, sha256)} from an earlier run's manifest of the same split and seed."""
    try:
        manifest = json.loads((out / MANIFEST_NAME).read_text())
        if (manifest["split"], manifest["seed"]) != (split, seed):
            return {}
        num, size, checksums = int(manifest["num"]), int(manifest["shard_size"]), dict(manifest["sha256"])
        return {name: (j * size, min(num, (j + 1) * size), checksums[name])
                for j, name in enumerate(manifest["shards"]) if name in checksums}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


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
    recorded = _recorded_checksums(out, split, seed)

    def task(shard: int, start: int) -> _ShardTask:
        stop = min(num, start + shard_size)
        earlier = recorded.get(shard_name(split, shard))
        return _ShardTask(str(out), split, seed, shard, start, stop,
                          earlier[2] if earlier is not None and earlier[:2] == (start, stop) else None)

    tasks = [task(shard, start) for shard, start in enumerate(range(0, num, shard_size))]
    checksums: dict[str, str] = {}
    workers = max(1, min(workers or os.cpu_count() or 1, len(tasks)))
    bar = tqdm(total=len(tasks), desc=f"shapes {split} shards", unit="shard", disable=not progress)
    kept = 0
    with bar:
        with Pool(workers) if workers > 1 else nullcontext() as pool:  # no pool for one worker: easier to debug
            for name, written, digest in pool.imap_unordered(_write_shard, tasks) if pool else map(_write_shard, tasks):
                checksums[name] = digest
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
        "sha256": {name: checksums[name] for name in sorted(checksums)},  # what a rerun checks each shard against
    }
    temp = out / f".{MANIFEST_NAME}{TEMP_SUFFIX}"
    temp.write_text(json.dumps(manifest, indent=2))
    os.replace(temp, out / MANIFEST_NAME)
    return manifest
