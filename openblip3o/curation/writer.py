"""Durable output: webdataset shards finalised by atomic rename, and an append-only JSONL failure log.

The shards themselves are the record of finished work: an item is done exactly when a shard under its final name holds
it, and a shard gets that name only after its data is fsynced (write `.NAME.tmp`, fsync, rename). A kill therefore
loses at most the unfinished shard's items, which a rerun makes again under the same ids; it can never leave an item
in two shards. Failures are appended one fsynced line at a time; a line cut by a kill is ignored on reading, so that
item is simply tried again.
"""

from __future__ import annotations

import json
import os
import re
import tarfile
import time
from collections import Counter
from pathlib import Path

import webdataset

from .items import Item

SHARD_PATTERN = "curated-{:06d}.tar"
SHARD_RE = re.compile(r"^curated-(\d{6})\.tar$")
FAILURES_NAME = "failures.jsonl"
TEMP_SUFFIX = ".tmp"
SHARD_MTIME = 0  # fixed member mtimes: the same items give byte-identical members


def _fsync_dir(path: Path) -> None:
    """Make a rename durable: the directory entry itself must reach the disk (POSIX; a no-op where unsupported)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def shard_paths(out: Path) -> list[Path]:
    return sorted(p for p in out.iterdir() if SHARD_RE.match(p.name))


def shard_ids(path: Path) -> list[str]:
    """The item ids in one shard, from the tar headers only (no image is read)."""
    ids: list[str] = []
    try:
        with tarfile.open(path, "r:") as tar:
            for member in tar:
                if member.name.endswith(".json"):
                    ids.append(member.name[: -len(".json")])
    except (OSError, tarfile.TarError):  # cannot happen through our renames; a damaged copy keeps what it has
        pass
    return ids


class ShardWriter:
    """Buffers accepted items and writes a shard every `shard_size` of them (and the rest on `close`)."""

    def __init__(self, out: Path, shard_size: int):
        self.out, self.shard_size = out, shard_size
        for stale in out.glob(f".curated-*{TEMP_SUFFIX}"):  # a killed run's half-written shard
            stale.unlink(missing_ok=True)
        existing = shard_paths(out)
        self.next_index = 1 + max((int(SHARD_RE.match(p.name).group(1)) for p in existing), default=-1)
        self.done: dict[str, str] = {i: p.name for p in existing for i in shard_ids(p)}  # id -> shard
        self.buffer: list[dict] = []
        self.written: list[str] = []  # shards written by this writer

    def add(self, item: Item, data: bytes, ext: str, meta: dict) -> None:
        if item.id in self.done or any(s["__key__"] == item.id for s in self.buffer):
            raise RuntimeError(f"item {item.id} is already written")  # a logic error: never write a duplicate
        self.buffer.append({"__key__": item.id, ext: data, "json": json.dumps(meta, sort_keys=True).encode()})
        if len(self.buffer) >= self.shard_size:
            self.flush()

    def flush(self) -> None:
        if not self.buffer:
            return
        final = self.out / SHARD_PATTERN.format(self.next_index)
        temp = self.out / f".{final.name}{TEMP_SUFFIX}"
        try:
            with open(temp, "wb") as stream:
                with webdataset.TarWriter(stream, encoder=False, mtime=SHARD_MTIME) as writer:
                    for sample in self.buffer:
                        writer.write(sample)
                stream.flush()
                os.fsync(stream.fileno())  # data on disk before the name says "complete"
            os.replace(temp, final)
            _fsync_dir(self.out)
        finally:
            temp.unlink(missing_ok=True)
        self.done.update({s["__key__"]: final.name for s in self.buffer})
        self.written.append(final.name)
        self.next_index += 1
        self.buffer = []

    def close(self) -> None:
        self.flush()


class FailureLog:
    """`failures.jsonl`: one line per item that could not be made or was filtered out, with its reason."""

    def __init__(self, out: Path):
        self.path = out / FAILURES_NAME
        self.entries: dict[str, dict] = {}
        if self.path.is_file():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    entry = json.loads(line)
                    self.entries[entry["id"]] = entry
                except (ValueError, KeyError, TypeError):
                    continue  # a line cut short by a kill: that item will be tried again
        self.stream = None

    def drop(self, ids: set[str]) -> None:
        """Forget these items' failures (to retry them): rewrite the log atomically without them."""
        if not ids & set(self.entries):
            return
        self.entries = {k: v for k, v in self.entries.items() if k not in ids}
        temp = self.path.with_name(f".{FAILURES_NAME}{TEMP_SUFFIX}")
        temp.write_text("".join(json.dumps(e) + "\n" for e in self.entries.values()), encoding="utf-8")
        os.replace(temp, self.path)

    def record(self, item: Item, reason: str, detail: str, attempts: int) -> None:
        if item.id in self.entries:
            raise RuntimeError(f"item {item.id} already has a failure entry")
        entry = {"id": item.id, "index": item.index, "seed": item.seed, "category": item.category,
                 "prompt": item.prompt, "reason": reason, "detail": detail, "attempts": attempts, "time": time.time()}
        if self.stream is None:
            self.stream = open(self.path, "a", encoding="utf-8")
            if self.stream.tell() and not self.path.read_bytes().endswith(b"\n"):
                self.stream.write("\n")  # end the line a kill cut, so the new entry parses
        self.stream.write(json.dumps(entry) + "\n")
        self.stream.flush()
        os.fsync(self.stream.fileno())
        self.entries[item.id] = entry

    def reasons(self) -> Counter:
        return Counter(e["reason"] for e in self.entries.values())

    def close(self) -> None:
        if self.stream is not None:
            self.stream.close()
            self.stream = None
