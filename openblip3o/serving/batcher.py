"""Micro-batching: concurrent requests become one pipeline batch, run by the one thread that owns the pipeline.

The first waiting job opens a batch; for up to `max_wait_ms` the worker gathers later jobs that can share the same
pipeline call (generation jobs with equal step and guidance settings, questions with an equal token budget) until
`max_batch` images or questions are in. Each image carries its own seeded generator, so an image is the same whether it
ran alone or in a batch of 16 (the pipeline guarantees batch == alone). Callers get a `concurrent.futures.Future`;
asyncio code awaits it with `asyncio.wrap_future`.

A request's bad input fails that request alone: when a batch of several requests raises, each is run again by itself,
so only the one that raises on its own fails. A client that gives up (`abandon(future)`) costs nothing more: a queued
job leaves the queue at once, and a running batch whose every job was abandoned stops at its next denoising step (a
forward pre-hook on the pipeline's generator and decoder modules, where the pipeline has them).
"""

from __future__ import annotations

import collections
import secrets
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

from ..config import SamplingSettings
from .limits import Limits, RequestError

SEED_BITS = 31  # seeds drawn for requests without one fit any signed 32-bit consumer


class QueueFull(RequestError):
    """The queue holds `max_queue` requests: the client should retry later (HTTP 429)."""

    def __init__(self, limit: int):
        super().__init__(f"the server is busy: {limit} requests are already waiting; retry shortly", status=429,
                         code="queue_full", type="rate_limit_error")


class Abandoned(RuntimeError):
    """Every job of the running batch was abandoned by its client: raised between denoising steps to stop it."""


@dataclass(eq=False)
class _Job:
    kind: str  # "generate" | "answer"
    key: tuple  # jobs with equal keys may share a batch
    items: list  # generate: [(prompt, seed)], answer: [(image, question)]
    future: Future = field(default_factory=Future)
    abandoned: threading.Event = field(default_factory=threading.Event)


def _shutting_down() -> RequestError:
    return RequestError("the server is shutting down; retry shortly", status=503, type="server_error",
                        code="shutting_down")


def random_seed() -> int:
    return secrets.randbits(SEED_BITS)


class MicroBatcher:
    """Owns a pipeline and one worker thread; `generate` and `answer` are safe to call from any thread."""

    def __init__(self, pipe, limits: Limits | None = None):
        self.pipe, self.limits = pipe, limits or Limits()
        self._pending: collections.deque[_Job] = collections.deque()
        self._cond = threading.Condition()
        self._closed = False
        self.stats = {"batches": 0, "images": 0, "answers": 0, "largest_batch": 0, "abandoned": 0}
        self._jobs: dict[Future, _Job] = {}  # every queued or running job, by its future (for `abandon`)
        self._current: list[_Job] = []  # the batch the worker is running
        self._thread: threading.Thread | None = None
        self._hooks: list = []
        self.start()

    def start(self) -> None:
        """Start the worker (done on construction); after `close`, start it again (an ASGI app's lifespan may run
        more than once: test clients start and stop it around their requests)."""
        with self._cond:
            if self._thread is not None and self._thread.is_alive() and not self._closed:
                return
            self._closed = False
            self._thread = threading.Thread(target=self._run, name="openblip3o-batcher", daemon=True)
            self._hooks = self._hooks or self._install_stop_hooks()
            self._thread.start()

    # --- public API ------------------------------------------------------------------------------------------------
    def generate(self, prompt: str, n: int = 1, seed: int | None = None,
                 settings: SamplingSettings = SamplingSettings()) -> Future:
        """Queue `n` images of `prompt`; image k uses seed `seed + k` (random if None). Resolves to a list of PIL images."""
        base = random_seed() if seed is None else seed
        items = [(prompt, base + k) for k in range(n)]
        return self._submit(_Job("generate", ("generate", settings), items))

    def answer(self, image, question: str, max_new_tokens: int = 8) -> Future:
        """Queue one question about one image. Resolves to the answer string."""
        return self._submit(_Job("answer", ("answer", max_new_tokens), [(image, question)]))

    def abandon(self, future: Future) -> None:
        """The client of `future` gave up: a queued job leaves the queue now; a running batch stops at its next
        denoising step once all of its jobs are abandoned (jobs shared with live clients still finish)."""
        with self._cond:
            job = self._jobs.get(future)
            if job is None:
                return
            job.abandoned.set()
            if job in self._pending:
                self._pending.remove(job)
                del self._jobs[future]
                self.stats["abandoned"] += 1
            future.cancel()  # a no-op once running; a job taken for a batch but not yet started is then skipped

    @property
    def queue_length(self) -> int:
        with self._cond:
            return len(self._pending)

    def close(self, timeout: float | None = 5.0) -> None:
        """Stop taking work; jobs still queued fail with a 503. Waits for the running batch up to `timeout`."""
        with self._cond:
            self._closed = True
            dropped = list(self._pending)
            self._pending.clear()
            self._jobs.clear()
            self._cond.notify_all()
        for job in dropped:
            if job.future.set_running_or_notify_cancel():
                job.future.set_exception(_shutting_down())
        self._thread.join(timeout)
        for hook in self._hooks:
            hook.remove()
        self._hooks = []

    def _install_stop_hooks(self) -> list:
        """Forward pre-hooks on the modules called once per denoising step: they stop a batch nobody waits for."""
        model = getattr(self.pipe, "model", None)
        hooks = []
        for name in ("generator", "decoder"):
            module = getattr(model, name, None)
            if callable(getattr(module, "register_forward_pre_hook", None)):
                hooks.append(module.register_forward_pre_hook(self._stop_if_abandoned))
        return hooks

    def _stop_if_abandoned(self, _module, _args) -> None:
        if threading.current_thread() is not self._thread:
            return  # the same pipeline used elsewhere (a test, a script) is never touched
        batch = self._current
        if batch and all(job.abandoned.is_set() for job in batch):
            raise Abandoned("every request of this batch was abandoned by its client")

    # --- worker ----------------------------------------------------------------------------------------------------
    def _submit(self, job: _Job) -> Future:
        with self._cond:
            if self._closed:
                raise _shutting_down()
            if len(self._pending) >= self.limits.max_queue:
                raise QueueFull(self.limits.max_queue)
            self._pending.append(job)
            self._jobs[job.future] = job
            self._cond.notify_all()
        return job.future

    def _take_batch(self) -> list[_Job] | None:
        """Block for a job, then gather compatible jobs for up to max_wait_ms or until the batch is full."""
        me = threading.current_thread()
        with self._cond:
            while not self._pending and not self._closed and self._thread is me:
                self._cond.wait()
            if self._closed or self._thread is not me:  # closed, or replaced by a restarted worker
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
            with self._cond:  # under the lock: `abandon` sees each job either cancelled here or in _current
                live = []
                for job in batch:
                    if job.future.set_running_or_notify_cancel():
                        live.append(job)
                    else:  # abandoned after it was taken from the queue, before it started
                        self._jobs.pop(job.future, None)
                        self.stats["abandoned"] += 1
                batch = self._current = live
            if batch:
                self._execute(batch)
            with self._cond:
                self._current = []

    def _execute(self, batch: list[_Job]) -> None:
        """Run one batch and resolve its futures. A batch of several jobs that raises runs again one job at a time,
        so a request whose input breaks the pipeline fails alone and its batch-mates are still served."""
        self._current = batch
        try:
            results = self._generate(batch) if batch[0].kind == "generate" else self._answer(batch)
        except Abandoned as err:
            self._finish(batch, error=err)
            self.stats["abandoned"] += len(batch)
            return
        except Exception as err:  # noqa: BLE001 - the worker must survive anything a batch raises
            if len(batch) == 1:
                self._finish(batch, error=err)
                return
            for job in batch:
                if job.abandoned.is_set():
                    self._finish([job], error=Abandoned("abandoned by its client"))
                    self.stats["abandoned"] += 1
                else:
                    self._execute([job])
            return
        start = 0
        for job in batch:
            chunk = results[start : start + len(job.items)]
            self._finish([job], result=chunk if job.kind == "generate" else chunk[0])
            start += len(job.items)

    def _finish(self, jobs: list[_Job], result=None, error: BaseException | None = None) -> None:
        with self._cond:
            for job in jobs:
                self._jobs.pop(job.future, None)
        for job in jobs:
            if error is not None:
                job.future.set_exception(error)
            else:
                job.future.set_result(result)

    def _generate(self, batch: list[_Job]) -> list:
        import torch

        settings: SamplingSettings = batch[0].key[1]  # equal settings are what let these jobs share the call
        items = [item for job in batch for item in job.items]
        images = self.pipe(
            prompt=[prompt for prompt, _ in items], num_images_per_prompt=1, **settings.as_kwargs(),
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
