"""Where a training stage's examples come from: ShapesWorld rendered on the fly, or webdataset shards.

Every stage asks its source for `examples(start, size, stream)`: examples [start, start + size) of a stream, always
the same ones for the same (config, seed), so a resumed run sees exactly the data it would have seen. A stage draws
from up to three independent streams: `MAIN` (its training rows), `TEXT` (the understanding stage's text-only rows)
and `FIT` (the statistics fitted at the start of generation, a draw apart from training).

- `ShapesSource`: example i of stream s is `ShapesWorld(split, seed)[STREAM_OFFSETS[s] + i]`.
- `ShardSource`: the shards through `ShardReader`, epoch after epoch, in the reader's seeded order (one reader per
  stream, seeded apart; `shuffle: false` keeps file order, so shards written by `openblip3o data shapes` give
  ShapesWorld's examples 0, 1, 2, ... exactly as the world does). Reading is sequential: a request at the position
  the last one ended is served straight on, a later one skips forward, an earlier one restarts from the nearest
  position where an earlier batch began (the reader's state is kept there), else from the start.

An example is a `data.shapes.Example`: image, `annotation` with `captions.long`, `captions.short`, `prompt`, `vqa`
(what the stages read), and `scene` when the shard's json holds ShapesWorld's objects (the per-token vision labels
need it), else None.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

from ..config import ConfigError, check_choice
from .shapes import ShapesWorld
from .shapes.examples import Example
from .shapes.scene import Scene
from .shards import Sample, ShardReader

MAIN, TEXT, FIT = "main", "text", "fit"
# ShapesWorld index where each stream starts: far apart, so no run's streams overlap.
STREAM_OFFSETS = {MAIN: 0, TEXT: 1 << 30, FIT: 1 << 32}
# ShardSource: each stream's reader is seeded this far from the others (ShardReader seeds epoch e with seed + e).
SHARD_STREAM_SEED_STRIDE = 1 << 20
TEXT_MEMBER = "txt"  # a field name meaning the sample's text: its txt member (else the reader's json fallback)
MARKS_KEPT = 64  # reader states kept at batch starts, for cheap backward seeks (the fits, a stage's finish)


@dataclass
class DataSourceConfig:
    """One stage's data. Field names: `txt` is the txt member; anything else a dotted path into the json member.

    BLIP3-o's caption tars hold `{jpg, txt}` (long and short captions in separate tars: list both folders and keep
    `short_caption` at a field they lack); shards of `openblip3o data shapes` hold `{png, json}` with every field below.
    A missing short caption or prompt falls back to the long caption; a missing long caption is an error.
    """

    kind: str = "shapes"  # "shapes": ShapesWorld rendered on the fly | "shards": webdataset tars
    split: str = "train"  # shapes: the world's split
    shards: list[str] = field(default_factory=list)  # shards: folders, globs or .tar files
    long_caption: str = TEXT_MEMBER
    short_caption: str = "captions.short"
    prompt: str = "prompt"  # GenEval-style prompt (generation's and the text rows' prompt share)
    vqa: str = "vqa"  # a list of {question, answer} (understanding)
    question: str = "question"  # or one question/answer pair per sample; neither: a captioning row
    answer: str = "answer"
    shuffle: bool = True  # false: file order (the shards of `openblip3o data shapes` then equal the world)
    shuffle_buffer: int = 1000

    def __post_init__(self):
        check_choice("kind", self.kind, ("shapes", "shards"))
        if self.kind == "shards" and not self.shards:
            raise ConfigError("shards: a shard source needs at least one folder, glob or .tar file")
        if not all(isinstance(path, str) for path in self.shards):
            raise ConfigError(f"shards: expected a list of paths, got {self.shards!r}")
        if self.shuffle_buffer < 0:
            raise ConfigError(f"shuffle_buffer must be >= 0, got {self.shuffle_buffer}")


class DataSource(Protocol):
    def examples(self, start: int, size: int, stream: str = MAIN) -> list[Example]: ...

    def state_dict(self) -> dict: ...  # saved with a training checkpoint: a resume then seeks cheaply

    def load_state_dict(self, state: dict) -> None: ...


def build_source(config: DataSourceConfig | None, seed: int) -> DataSource:
    config = config or DataSourceConfig()
    if config.kind == "shapes":
        return ShapesSource(config.split, seed)
    return ShardSource(config, seed)


class ShapesSource:
    """ShapesWorld rendered on the fly: stream s, example i = world[STREAM_OFFSETS[s] + i]."""

    def __init__(self, split: str = "train", seed: int = 0):
        self.world = ShapesWorld(split, seed)

    def examples(self, start: int, size: int, stream: str = MAIN) -> list[Example]:
        first = STREAM_OFFSETS[stream] + start
        return [self.world[i] for i in range(first, first + size)]

    def state_dict(self) -> dict:
        return {}  # random access: nothing to remember

    def load_state_dict(self, state: dict) -> None:
        pass


class _Cursor:
    """One stream of a ShardSource: its reader, epoch after epoch, and how many samples it has handed out."""

    def __init__(self, make_reader):
        self.make_reader = make_reader
        self.position, self.reader, self.samples = 0, None, None
        self.marks: OrderedDict[int, dict] = OrderedDict()  # position -> reader state there

    def take(self, start: int, size: int) -> list[Sample]:
        if self.samples is None or start < self.position:
            self._restart(start)
        while self.position < start:  # skip forward (another process's share, or a resume without a mark)
            next(self.samples)
            self.position += 1
        self.marks[start] = self.reader.state_dict()
        self.marks.move_to_end(start)
        while len(self.marks) > MARKS_KEPT:
            self.marks.popitem(last=False)
        taken = [next(self.samples) for _ in range(size)]
        self.position += size
        self.marks[self.position] = self.reader.state_dict()  # where the next batch starts: a resume's mark
        return taken

    def latest(self) -> list:
        """[position, reader state] of the furthest mark ([] before any read): enough to resume without decoding."""
        if not self.marks:
            return []
        position = max(self.marks)
        return [position, self.marks[position]]

    def load_latest(self, mark: list) -> None:
        self.marks.clear()
        if mark:
            self.marks[int(mark[0])] = mark[1]
        self.samples = None  # the next read reopens the reader at the mark

    def _restart(self, start: int) -> None:
        """Reopen at the nearest kept position <= start (the reader skips raw samples there without decoding)."""
        self.reader = self.make_reader()
        before = [position for position in self.marks if position <= start]
        self.position = max(before, default=0)
        if before:
            self.reader.load_state_dict(self.marks[self.position])
        self.samples = self._forever()

    def _forever(self) -> Iterator[Sample]:
        while True:
            count, from_epoch_start = 0, self.reader.position == 0
            for sample in self.reader:  # one epoch; the reader moves itself to the next one
                count += 1
                yield sample
            if count == 0 and from_epoch_start:  # a whole epoch gave nothing: it never will
                raise ValueError(f"no readable samples in {len(self.reader.shards)} shard(s): "
                                 f"{dict(self.reader.skipped) or 'they are empty'}")


class ShardSource:
    """Webdataset shards as a stage's examples (see the module docstring)."""

    def __init__(self, config: DataSourceConfig, seed: int = 0):
        self.config, self.seed = config, seed
        self.cursors = {stream: _Cursor(self._reader_factory(index)) for index, stream in enumerate(STREAM_OFFSETS)}

    def _reader_factory(self, stream_index: int):
        config = self.config
        seed = self.seed + stream_index * SHARD_STREAM_SEED_STRIDE
        return lambda: ShardReader(config.shards, seed=seed, shuffle_buffer=config.shuffle_buffer, shuffle=config.shuffle)

    def examples(self, start: int, size: int, stream: str = MAIN) -> list[Example]:
        return [self.example(sample) for sample in self.cursors[stream].take(start, size)]

    def state_dict(self) -> dict:
        """Where each stream's reader stands (JSON-ready). Not needed for exactness, only for speed: a source
        without it reaches a position by decoding every example before it; with it, by skipping raw samples."""
        return {stream: cursor.latest() for stream, cursor in self.cursors.items()}

    def load_state_dict(self, state: dict) -> None:
        for stream, mark in state.items():
            self.cursors[stream].load_latest(mark)

    def example(self, sample: Sample) -> Example:
        """A shard sample in the form the stages read (ShapesWorld's annotation fields)."""
        config = self.config
        long = _field(sample, config.long_caption)
        if long is None:
            raise ValueError(f"shard {sample.source}, sample {sample.key}: no long caption field "
                             f"{config.long_caption!r} (set data.<stage>.long_caption)")
        short, prompt = _field(sample, config.short_caption), _field(sample, config.prompt)
        vqa = _field(sample, config.vqa)
        if not isinstance(vqa, list):
            question, answer = _field(sample, config.question), _field(sample, config.answer)
            vqa = [{"question": str(question), "answer": str(answer)}] if question and answer else []
        annotation = {"captions": {"long": str(long), "short": str(long if short is None else short)},
                      "prompt": str(long if prompt is None else prompt), "vqa": vqa}
        meta = sample.meta
        scene = Scene.from_dict(meta) if "objects" in meta and "image_size" in meta else None
        return Example(sample.key, sample.image, scene, annotation)


def _field(sample: Sample, name: str):
    """The value of field `name` of a sample, or None when it has none."""
    if name == TEXT_MEMBER:
        return sample.text or None
    value = sample.meta
    for part in name.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value
