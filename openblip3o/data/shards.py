"""WebDataset shards: read any image-text tars back (writing ShapesWorld shards is `shard_writer`).

One `ShardReader` serves ShapesWorld shards and users' own `{jpg|jpeg|png|webp, txt|json}` tars. Its
order is a deterministic function of (seed, epoch), so a position in it (`state_dict`) is enough to resume.
Damaged data is skipped, counted in `reader.skipped`, and reported with a `CorruptSampleWarning`: every sample of a
shard is either read or counted, including those behind a damaged member header (see `ShardReader._read_plain`).
"""

from __future__ import annotations

import glob
import io
import json
import os
import random
import re
import tarfile
import warnings
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from PIL import Image
from webdataset.tariterators import base_plus_ext, group_by_keys, tar_file_iterator


MANIFEST_NAME = "manifest.json"

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")  # in order of preference when a sample has several
TEXT_FIELDS = ("caption", "text", "prompt")  # json fields taken as text when there is no captions.long
TAR_BLOCK = 512
END_OF_ARCHIVE = 2 * TAR_BLOCK  # POSIX tars end with two zero blocks; without them the file was cut short
BUFFER_STREAM_OFFSET = 1 << 32  # the buffer shuffle's generator is independent of the shard-order one
GLOB_CHARS = "*?["
SCAN_CHUNK = 1 << 20  # bytes read at a time when looking past damage
TOUCHED = "__damaged__"  # internal mark on a raw sample that a damaged stretch may have taken members from
NUMBERED_KEY = re.compile(r"(.*?)(\d+)")  # webdataset keys usually end in a running number
# gzip, bzip2, xz, zstd: such tars can only be streamed, so damage ends their reading (counted once)
SHAPES_MEMBERS = frozenset({"json", "png"})  # what `encode_example` writes for every sample
COMPRESSED_SNIFF = 64 * 512  # how far a plain tar's first intact header is looked for before calling a file compressed
COMPRESSED_MAGIC = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00", b"\x28\xb5\x2f\xfd")


# --------------------------------------------------------------------------------------------------- naming

def shard_name(split: str, index: int) -> str:
    return f"shapes-{split}-{index:06d}.tar"


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


def _first_nonzero(stream, start: int, size: int) -> int | None:
    """The offset of the first non-zero byte in [start, size), or None."""
    position = start
    while position < size:
        chunk = os.pread(stream.fileno(), min(SCAN_CHUNK, size - position), position)
        if not chunk:
            return None
        stripped = chunk.lstrip(b"\0")
        if stripped:
            return position + len(chunk) - len(stripped)
        position += len(chunk)
    return None


def _next_header(stream, start: int, size: int) -> int | None:
    """The first block-aligned offset >= start holding a valid tar header (checksum and fields), or None."""
    offset = -(-start // TAR_BLOCK) * TAR_BLOCK
    while offset + TAR_BLOCK <= size:
        block = os.pread(stream.fileno(), TAR_BLOCK, offset)
        if any(block):
            try:
                tarfile.TarInfo.frombuf(block, tarfile.ENCODING, "surrogateescape")
                return offset
            except tarfile.HeaderError:
                pass
        offset += TAR_BLOCK
    return None


def _plain_tar_members(stream) -> Iterator[tuple]:
    """("member", name, bytes) for each file of an uncompressed tar in file order, and ("damage", start, resume) for
    each stretch tarfile cannot read: resume is the next intact header, or None when none follows (a cut file too).

    tarfile ends quietly at a zeroed header, at an invalid one and at a cut between members; what follows the place
    it stopped tells them apart: zero blocks up to the end (at least the two of the end-of-archive marker) is a clean
    end, anything else is damage, and reading resumes at the next valid header.
    """
    size = os.fstat(stream.fileno()).st_size
    start = 0
    while True:
        stop = start  # the end of the last member read whole
        stream.seek(start)
        try:
            tar = tarfile.TarFile(fileobj=stream, mode="r")  # reads from the stream's position on
            while (member := tar.next()) is not None:
                if member.isfile():
                    data = tar.extractfile(member).read()  # raises ReadError on data cut short
                    yield "member", member.name, data
                stop = tar.offset
        except (tarfile.TarError, EOFError):
            pass  # a header tarfile refuses, or data running past the end: damage at `stop`
        nonzero = _first_nonzero(stream, stop, size)
        if nonzero is None:
            if size - stop >= END_OF_ARCHIVE:
                return  # the end-of-archive marker: a complete tar
            yield "damage", stop, None  # ends without its marker: cut short
            return
        resume = _next_header(stream, max(stop + TAR_BLOCK, nonzero), size)
        yield "damage", stop, resume
        if resume is None:
            return
        start = resume


def _key_gap(before: str | None, after: str) -> int | None:
    """How many keys lie strictly between two keys with the same prefix and a numeric suffix (None: cannot tell)."""
    if before is None:
        return None
    a, b = NUMBERED_KEY.fullmatch(before), NUMBERED_KEY.fullmatch(after)
    if a is None or b is None or a.group(1) != b.group(1):
        return None
    gap = int(b.group(2)) - int(a.group(2)) - 1
    return gap if gap >= 0 else None


def _read_manifest(folder: Path) -> dict[str, int]:
    """{shard name: sample count} from a `write_shapes_shards` manifest in `folder` ({} when there is none)."""
    try:
        manifest = json.loads((folder / MANIFEST_NAME).read_text())
        num, size, names = int(manifest["num"]), int(manifest["shard_size"]), list(manifest["shards"])
        if names != [shard_name(manifest["split"], j) for j in range(len(names))]:
            return {}
    except (OSError, ValueError, KeyError, TypeError):  # none, or another tool's (curation writes one too)
        return {}
    return {name: max(0, min(size, num - j * size)) for j, name in enumerate(names)}


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
        self._manifests: dict[str, dict[str, int]] = {}  # folder -> {shard name: sample count}

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
        """Group one tar's members into samples, counting every sample that cannot be read (see `_read_plain`)."""
        name = os.path.basename(path)
        with open(path, "rb") as stream:
            size = os.fstat(stream.fileno()).st_size
            # Compressed: it starts with a compressor's magic and no tar header follows soon (damage can write the
            # magic over a plain tar's first header; its next header then shows what the file is).
            compressed = (stream.read(len(max(COMPRESSED_MAGIC, key=len))).startswith(COMPRESSED_MAGIC)
                          and _next_header(stream, 0, min(size, COMPRESSED_SNIFF)) is None)
            stream.seek(0)
            if compressed:
                yield from self._read_compressed(name, stream, self._expected_samples(path))
            else:
                yield from self._read_plain(name, stream, self._expected_samples(path))

    def _count_missing(self, name: str, expected: int | None, seen: int, lost: int) -> None:
        """Samples the manifest lists for this shard that were neither read nor counted yet."""
        if expected is not None and seen + lost < expected:
            self._skip("missing_samples", name, "<end>", f"the manifest lists {expected} samples for this shard; "
                       f"{seen} were read and {lost} counted as damaged", expected - seen - lost)

    def _read_compressed(self, name: str, stream, expected: int | None) -> Iterator[dict]:
        """A compressed tar can only be streamed: a damaged one yields what precedes the damage, counted once (and
        against the manifest's count, where there is one)."""
        last_member = "<none>"
        seen = lost = 0

        def members() -> Iterator[dict]:
            nonlocal last_member
            for member in tar_file_iterator(stream):  # raises tarfile.ReadError on a cut inside a member
                last_member = member["fname"]
                yield member | {"__url__": name}

        def on_duplicate(error: Exception) -> bool:
            self._skip("duplicate_member", name, "?", error)
            return True  # keep the first copy, go on

        try:
            for sample in group_by_keys(members(), handler=on_duplicate):
                seen += 1
                yield sample
        except (tarfile.TarError, EOFError, OSError, zlib.error) as error:
            lost += 1
            self._skip("truncated_tar", name, f"after member {last_member}", f"{error}; sample in progress dropped")
        self._count_missing(name, expected, seen, lost)

    def _read_plain(self, name: str, stream, expected: int | None) -> Iterator[dict]:
        """An uncompressed tar's samples, read past any damage.

        tarfile stops without a word at a damaged header (zeroed: it looks like the end; garbage: an invalid header).
        `_plain_tar_members` finds each damaged stretch and the next intact header after it; here the samples it
        touched are judged: the one in progress at the damage and the first one after it are dropped (and counted)
        when they lack members an intact sample of this shard has, and whole samples inside the stretch are counted
        from the gap in the numeric keys around it (`shapes-...-000012` -> `000015`: two lost). A shard listed in a
        `manifest.json` beside it (written by `write_shapes_shards`) also has its sample count checked at the end, so
        samples lost where the keys cannot tell (a cut end, keys without numbers) are counted too.
        """
        seen = lost = 0
        current: dict | None = None
        last_key: str | None = None  # the key of the last sample started before a damaged stretch
        after_damage, truncated = False, False
        last_member = "<none>"

        def count(reason: str, key: str, detail, n: int = 1) -> None:
            nonlocal lost
            lost += n
            self._skip(reason, name, key, detail, n)

        held: list[dict] = []  # touched samples met before any intact one: judged once an intact one shows the set

        # A manifest's shard was written by `write_shapes_shards`: every sample has exactly these members, so one
        # without them is damaged even where no damaged stretch was seen (a header whose bytes changed but whose
        # checksum, a plain byte sum, still holds moves a member to another key).
        uniform = SHAPES_MEMBERS if expected is not None else None
        reference = uniform

        def judge(sample: dict, extensions: frozenset, reason: str = "damaged_tar") -> list[dict]:
            nonlocal seen
            if reference is not None and not extensions >= reference:
                count(reason, sample["__key__"], f"members lost to damage; has {sorted(extensions)}, an intact sample "
                      f"has {sorted(reference)}")
                return []
            seen += 1
            return [sample]

        def finish(sample: dict | None, last: bool = False) -> list[dict]:
            """The samples to yield, in order: touched ones that damage took members from are dropped and counted."""
            nonlocal reference
            out = []
            if sample is not None:
                touched = sample.pop(TOUCHED, False)
                extensions = frozenset(k for k in sample if not k.startswith("__"))
                if uniform is not None:
                    out += judge(sample, extensions, "damaged_tar" if touched else "missing_member")
                elif touched and reference is None:
                    held.append(sample)
                else:
                    if not touched:
                        reference = extensions
                    for early in held:
                        out += judge(early, frozenset(k for k in early if not k.startswith("__")))
                    held.clear()
                    out += judge(sample, extensions)
            if last:  # no intact sample ever showed what a sample holds: the held ones cannot be vouched for
                for early in held:
                    count("damaged_tar", early["__key__"], "next to a damaged stretch, and no intact sample of this "
                          "shard shows whether it is whole")
                held.clear()
            return out

        for kind, *event in _plain_tar_members(stream):
            if kind == "damage":
                start, resume = event
                if resume is None:  # nothing readable up to the end of the file
                    truncated = True
                    if current is not None:
                        count("truncated_tar", current["__key__"], f"after member {last_member}: the file is cut or "
                              f"damaged from byte {start} to its end; sample in progress dropped")
                        current = None
                    elif seen + lost == 0:
                        count("truncated_tar", "<none>", f"no sample readable: damaged from byte {start}")
                    break
                if current is not None:
                    current[TOUCHED] = True
                    last_key = current["__key__"]
                after_damage = True
                self._damage_note(name, start, resume)
                continue
            fname, data = event
            last_member = fname
            key, extension = base_plus_ext(fname)
            if key is None:
                continue  # no extension: not a sample's member (webdataset skips these too)
            extension = extension.lower()
            if current is not None and key == current["__key__"]:
                after_damage = False  # the sample in progress goes on after the damaged stretch
                if extension in current:
                    self._skip("duplicate_member", name, key, f"second {extension!r} member ignored")
                else:
                    current[extension] = data
                continue
            yield from finish(current)
            if after_damage:
                gap = _key_gap(last_key, key)
                if gap:
                    count("damaged_tar", f"between {last_key} and {key}", "whole samples inside a damaged stretch "
                          "(counted from the key sequence)", gap)
            current = {"__key__": key, "__url__": name, extension: data, TOUCHED: after_damage}
            after_damage = False
        yield from finish(None if truncated else current, last=True)
        self._count_missing(name, expected, seen, lost)

    def _damage_note(self, name: str, start: int, resume: int) -> None:
        warnings.warn(f"shard {name}: bytes {start}-{resume} are damaged; reading goes on at the next intact member",
                      CorruptSampleWarning, stacklevel=3)

    def _expected_samples(self, path: str) -> int | None:
        """The sample count of `path` from the `manifest.json` beside it, when that manifest lists it."""
        folder, name = os.path.split(os.path.abspath(path))
        if folder not in self._manifests:
            self._manifests[folder] = _read_manifest(Path(folder))
        return self._manifests[folder].get(name)

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

    def _skip(self, reason: str, shard: str, key: str, detail, count: int = 1) -> None:
        self.skipped[reason] += count
        what = "" if count == 1 else f"{count} samples "
        warnings.warn(f"skipped {what}({reason}) in shard {shard}, key {key}: {detail}", CorruptSampleWarning,
                      stacklevel=2)
