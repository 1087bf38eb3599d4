"""Data throughput: ShapesWorld generation, shard writing, and reading back through `ShardReader`.

    python bench/data.py --seconds 5 --workers 2

Each figure runs for about `--seconds`; generation counts scene sampling + rendering + annotation (the
`ShapesWorld.__getitem__` path), writing adds PNG/JSON encoding and tar output, reading includes PNG decoding.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from multiprocessing import Pool
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from openblip3o.data.shapes import ShapesWorld  # noqa: E402
from openblip3o.data.shard_writer import write_shapes_shards  # noqa: E402
from openblip3o.data.shards import ShardReader  # noqa: E402

CHUNK = 500  # scenes per pool task: large enough that pickling and scheduling are negligible
CHUNKS_PER_ROUND = 4  # per worker; the pool idles only at the end of a round, while its last chunks finish
SHARD_SIZE = 1000
TARGET_SCENES_PER_S = 5000  # the goal on 2 cores, with the pool
SEED = 0


def generate_chunk(start: int) -> int:
    world = ShapesWorld("train", SEED)  # cheap to build, so each task builds its own
    for index in range(start, start + CHUNK):
        world[index]
    return CHUNK


def bench_single(seconds: float) -> tuple[int, float]:
    done, begin = 0, time.perf_counter()
    while time.perf_counter() - begin < seconds:
        done += generate_chunk(done)
    return done, time.perf_counter() - begin


def bench_pool(seconds: float, workers: int) -> tuple[int, float]:
    with Pool(workers) as pool:
        pool.map(generate_chunk, range(workers))  # start the workers and import everything before timing
        done, begin, next_start = 0, time.perf_counter(), 0
        while time.perf_counter() - begin < seconds:
            round_size = workers * CHUNKS_PER_ROUND * CHUNK
            done += sum(pool.imap_unordered(generate_chunk, range(next_start, next_start + round_size, CHUNK)))
            next_start += round_size
        return done, time.perf_counter() - begin


def bench_write(out_dir: Path, num: int, workers: int) -> tuple[int, float]:
    begin = time.perf_counter()
    write_shapes_shards(out_dir, num, shard_size=SHARD_SIZE, seed=SEED, workers=workers, progress=False)
    return num, time.perf_counter() - begin


def bench_read(out_dir: Path, seconds: float) -> tuple[int, float]:
    reader = ShardReader(out_dir, seed=SEED)
    done, begin = 0, time.perf_counter()
    while time.perf_counter() - begin < seconds:
        for sample in reader:
            sample.image.load()
            done += 1
    return done, time.perf_counter() - begin


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="time budget of each measurement")
    parser.add_argument("--workers", type=int, default=2, help="processes for the pool and for shard writing")
    args = parser.parse_args()

    rows = [("generate, 1 process", *bench_single(args.seconds))]
    rows.append((f"generate, pool of {args.workers}", *bench_pool(args.seconds, args.workers)))
    pool_rate = rows[-1][1] / rows[-1][2]
    # Size the write so it takes about --seconds, in whole shards.
    num = max(SHARD_SIZE, round(pool_rate * args.seconds / SHARD_SIZE) * SHARD_SIZE)
    with tempfile.TemporaryDirectory() as tmp:
        rows.append((f"write shards, {args.workers} workers", *bench_write(Path(tmp), num, args.workers)))
        rows.append(("read via ShardReader (decode)", *bench_read(Path(tmp), args.seconds)))

    print(f"cpu cores: {os.cpu_count()}   goal: >= {TARGET_SCENES_PER_S:,} scenes/s generated")
    print(f"{'stage':<34}{'samples':>10}{'seconds':>10}{'samples/s':>12}")
    for name, count, elapsed in rows:
        print(f"{name:<34}{count:>10,}{elapsed:>10.2f}{count / elapsed:>12,.0f}")


if __name__ == "__main__":
    main()
