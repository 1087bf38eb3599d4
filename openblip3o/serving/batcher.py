"""Micro-batching: concurrent requests become one pipeline batch, run by the one thread that owns the pipeline.

The first waiting job opens a batch; for up to `max_wait_ms` the worker gathers later jobs that can share the same
pipeline call (generation jobs with equal step and guidance settings, questions with an equal token budget) until
`max_batch` images or questions are in. Each image carries its own seeded generator, so an image is the same whether it
ran alone or in a batch of 16 (the pipeline guarantees batch == alone). Callers get a `concurrent.futures.Future`;
asyncio code awaits it with `asyncio.wrap_future`.
"""

from __future__ import annotations

import collections
import secrets
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

from .limits import Limits, RequestError

SEED_BITS = 31  # seeds drawn for requests without one fit any signed 32-bit consumer


class QueueFull(RequestError):
    """The queue holds `max_queue` requests: the client should retry later (HTTP 429)."""

    def __init__(self, limit: int):
        super().__init__(f"the server is busy: {limit} requests are already waiting; retry shortly", status=429,
                         code="queue_full", type="rate_limit_error")


@dataclass(frozen=True)
class GenerationSettings:
    """What must be equal for images to share one pipeline call (None = the model's default)."""

    steps: int | None = None
    guidance: float | None = None
    decoder_steps: int | None = None
    decoder_guidance: float | None = None


@dataclass
class _Job:
    kind: str  # "generate" | "answer"
    key: tuple  # jobs with equal keys may share a batch
    items: list  # generate: [(prompt, seed)], answer: [(image, question)]
    future: Future = field(default_factory=Future)


def random_seed() -> int:
    return secrets.randbits(SEED_BITS)


class MicroBatcher:
    """Owns a pipeline and one worker thread; `generate` and `answer` are safe to call from any thread."""

    def __init__(self, pipe, limits: Limits | None = None):
        self.pipe, self.limits = pipe, limits or Limits()
        self._pending: collections.deque[_Job] = collections.deque()
        self._cond = threading.Condition()
        self._closed = False
        self.stats = {"batches": 0, "images": 0, "answers": 0, "largest_batch": 0}
        self._thread = threading.Thread(target=self._run, name="openblip3o-batcher", daemon=True)
        self._thread.start()

    # --- public API ------------------------------------------------------------------------------------------------
    def generate(self, prompt: str, n: int = 1, seed: int | None = None,
                 settings: GenerationSettings = GenerationSettings()) -> Future:
        """Queue `n` images of `prompt`; image k uses seed `seed + k` (random if None). Resolves to a list of PIL images."""
        base = random_seed() if seed is None else seed
        items = [(prompt, base + k) for k in range(n)]
        return self._submit(_Job("generate", ("generate", settings), items))

    def answer(self, image, question: str, max_new_tokens: int = 8) -> Future:
        """Queue one question about one image. Resolves to the answer string."""
        return self._submit(_Job("answer", ("answer", max_new_tokens), [(image, question)]))

    @property
    def queue_length(self) -> int:
        with self._cond:
            return len(self._pending)

    def close(self, timeout: float | None = 5.0) -> None:
        """Stop taking work; jobs still queued fail with RuntimeError. Waits for the running batch up to `timeout`."""
        with self._cond:
            self._closed = True
            dropped = list(self._pending)
            self._pending.clear()
            self._cond.notify_all()
        for job in dropped:
            job.future.set_exception(RuntimeError("the server is shutting down"))
        self._thread.join(timeout)

    # --- worker ----------------------------------------------------------------------------------------------------
    def _submit(self, job: _Job) -> Future:
        with self._cond:
            if self._closed:
                raise RuntimeError("the batcher is closed")
            if len(self._pending) >= self.limits.max_queue:
                raise QueueFull(self.limits.max_queue)
            self._pending.append(job)
            self._cond.notify_all()
        return job.future

    def _take_batch(self) -> list[_Job] | None:
        """Block for a job, then gather compatible jobs for up to max_wait_ms or until the batch is full."""
        with self._cond:
            while not self._pending and not self._closed:
                self._cond.wait()
            if self._closed:
                return None
            first = self._pending.popleft()
            batch, size = [first], len(first.items)
            deadline = time.monotonic() + self.limits.max_wait_ms / 1000
            while size < self.limits.max_batch:
                # Take compatible jobs in arrival order; incompatible ones keep their place for the next batch.
                for job in list(self._pending):
                    if job.key == first.key and size + len(job.items) <= self.limits.max_batch:
                        self._pending.remove(job)
                        batch.append(job)
                        size += len(job.items)
                remaining = deadline - time.monotonic()
                if size >= self.limits.max_batch or remaining <= 0 or self._closed:
                    break
                self._cond.wait(remaining)
            return batch

    def _run(self) -> None:
        while (batch := self._take_batch()) is not None:
            # A client that gave up (cancelled future) costs nothing more.
            batch = [job for job in batch if job.future.set_running_or_notify_cancel()]
            if not batch:
                continue
            try:
                results = self._generate(batch) if batch[0].kind == "generate" else self._answer(batch)
            except Exception as err:  # noqa: BLE001 - the worker must survive anything a batch raises
                for job in batch:
                    job.future.set_exception(err)
                continue
            start = 0
            for job in batch:
                chunk = results[start : start + len(job.items)]
                job.future.set_result(chunk if job.kind == "generate" else chunk[0])
                start += len(job.items)

    def _generate(self, batch: list[_Job]) -> list:
        import torch

        settings: GenerationSettings = batch[0].key[1]
        items = [item for job in batch for item in job.items]
        images = self.pipe(
            prompt=[prompt for prompt, _ in items], num_images_per_prompt=1,
            num_inference_steps=settings.steps, guidance_scale=settings.guidance,
            decoder_num_inference_steps=settings.decoder_steps, decoder_guidance_scale=settings.decoder_guidance,
            generator=[torch.Generator().manual_seed(seed) for _, seed in items], output_type="pil", progress=False,
        ).images
        self._count(len(items), "images")
        return images

    def _answer(self, batch: list[_Job]) -> list:
        items = [item for job in batch for item in job.items]
        answers = self.pipe.answer(images=[image for image, _ in items], questions=[q for _, q in items],
                                   max_new_tokens=batch[0].key[1])
        self._count(len(items), "answers")
        return answers

    def _count(self, size: int, what: str) -> None:
        self.stats["batches"] += 1
        self.stats[what] += size
        self.stats["largest_batch"] = max(self.stats["largest_batch"], size)
