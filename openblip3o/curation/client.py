"""A robust client for OpenAI-compatible image (and chat) endpoints: bounded concurrency, a client-side rate limit,
retries with exponential backoff, and a verdict for every item (an image, or a failure reason).

Plain `httpx` rather than the `openai` client: we need the raw status, `Retry-After`, and the body of bad answers for
the failure log, and we must tell a truncated body from a timeout. The API key goes only into the `Authorization`
header of the session; nothing here formats the session, its headers or the config's key into a message.
"""

from __future__ import annotations

import base64
import binascii
import io
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass

import httpx
from PIL import Image

from .config import EndpointConfig, ExpansionConfig
from .items import Item, Outcome

DETAIL_CHARS = 200  # how much of a server's error message goes into the failure log
RETRYABLE_STATUS = frozenset({408, 409, 425, 429})  # plus every 5xx: overload, restarts, gateways
WINDOW_PER_WORKER = 2  # requests submitted ahead per worker: keeps workers busy without holding all images in memory
CHAT_RETRIES = 3


class BadResponse(Exception):
    """A 200 answer whose body is unusable (not JSON, no image, not an image): worth another try."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


class RateLimiter:
    """At most `rate` request starts per second over all threads (0: unlimited); callers wait for their slot."""

    def __init__(self, rate: float):
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self.next_slot = 0.0
        self.lock = threading.Lock()

    def wait(self) -> None:
        if not self.interval:
            return
        with self.lock:
            now = time.monotonic()
            slot = max(now, self.next_slot)
            self.next_slot = slot + self.interval
        if slot > now:
            time.sleep(slot - now)


@dataclass
class RetryPolicy:
    retries: int
    base_s: float
    max_s: float

    def delay(self, attempt: int, retry_after: float | None) -> float:
        """Exponential backoff with "equal jitter" (half fixed, half random: no thundering herd after a burst of
        429s), never shorter than the server's Retry-After, never longer than `max_s`."""
        backoff = self.base_s * 2**attempt
        backoff = backoff / 2 + random.random() * backoff / 2
        return min(self.max_s, max(backoff, retry_after or 0.0))


def make_session(api_key: str | None, timeout_s: float) -> httpx.Client:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    return httpx.Client(timeout=timeout_s, headers=headers)


def _error_detail(response: httpx.Response) -> str:
    try:
        message = response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = response.text
    return str(message)[:DETAIL_CHARS]


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return float(response.headers.get("retry-after", ""))
    except ValueError:
        return None  # an HTTP date or garbage: fall back to our own backoff


def post_with_retries(session: httpx.Client, url: str, body: dict, policy: RetryPolicy, limiter: RateLimiter,
                      parse: Callable[[httpx.Response], object]) -> tuple[object | None, str | None, str, int]:
    """POST until `parse` accepts a 200 answer or the retries run out: (result, reason, detail, attempts).

    Retried: timeouts, connection errors (a body cut short lands here), 408/409/425/429, 5xx, and 200 answers that
    `parse` rejects with `BadResponse`. Other 4xx are the request's fault and final at once.
    """
    reason, detail = "unknown", ""
    for attempt in range(policy.retries + 1):
        limiter.wait()
        retry_after = None
        try:
            response = session.post(url, json=body)
        except httpx.TimeoutException as err:
            reason, detail = "timeout", type(err).__name__
        except httpx.TransportError as err:
            reason, detail = "connection_error", f"{type(err).__name__}: {err}"[:DETAIL_CHARS]
        else:
            status = response.status_code
            if status == 200:
                try:
                    return parse(response), None, "", attempt + 1
                except BadResponse as err:
                    reason, detail = err.reason, err.detail[:DETAIL_CHARS]
            elif status in RETRYABLE_STATUS or status >= 500:
                reason, detail, retry_after = f"http_{status}", _error_detail(response), _retry_after(response)
            else:
                return None, f"http_{status}", _error_detail(response), attempt + 1
        if attempt < policy.retries:
            time.sleep(policy.delay(attempt, retry_after))
    return None, reason, detail, policy.retries + 1


def parse_image(response: httpx.Response) -> tuple[Image.Image, bytes, str]:
    """The first image of an images/generations answer, fully decoded (a truncated file fails here, not later)."""
    try:
        entry = response.json()["data"][0]
        raw = base64.b64decode(entry["b64_json"], validate=True)
    except (ValueError, KeyError, IndexError, TypeError, binascii.Error) as err:
        raise BadResponse("bad_response", f"no b64_json image in the answer ({type(err).__name__})") from None
    try:
        with Image.open(io.BytesIO(raw)) as opened:
            ext = (opened.format or "png").lower().replace("jpeg", "jpg")
            image = opened.convert("RGB")  # forces the full decode
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise BadResponse("bad_image", f"undecodable image: {err}") from None
    return image, raw, ext


class HttpBackend:
    """Items -> `Outcome`s through `/v1/images/generations`, `concurrency` requests in flight, completion order."""

    def __init__(self, endpoint: EndpointConfig):
        if not endpoint.base_url:
            raise ValueError("no image endpoint: set endpoint.base_url in the config, --base-url, or "
                             "OPENBLIP3O_CURATE_BASE_URL (or use --backend local)")
        self.endpoint = endpoint
        self.url = endpoint.base_url.rstrip("/") + "/images/generations"
        self.policy = RetryPolicy(endpoint.retries, endpoint.backoff_base_s, endpoint.backoff_max_s)
        self.limiter = RateLimiter(endpoint.rate_limit)
        self.source = endpoint.model or endpoint.base_url

    def body(self, item: Item) -> dict:
        body = {"prompt": item.prompt, "n": 1, "response_format": "b64_json", "seed": item.seed,
                **self.endpoint.extra_body}
        if self.endpoint.model:
            body["model"] = self.endpoint.model
        if self.endpoint.size:
            body["size"] = self.endpoint.size
        return body

    def _one(self, session: httpx.Client, item: Item) -> Outcome:
        start = time.monotonic()
        result, reason, detail, attempts = post_with_retries(session, self.url, self.body(item), self.policy,
                                                             self.limiter, parse_image)
        seconds = time.monotonic() - start
        if result is None:
            return Outcome(item, reason=reason, detail=detail, attempts=attempts, seconds=seconds)
        image, raw, ext = result
        return Outcome(item, image=image, data=raw, ext=ext, attempts=attempts, seconds=seconds)

    def run(self, items: Iterable[Item]) -> Iterator[Outcome]:
        workers = self.endpoint.concurrency
        pending_items = iter(items)
        with make_session(self.endpoint.api_key, self.endpoint.timeout_s) as session, \
                ThreadPoolExecutor(workers, thread_name_prefix="curate") as pool:
            in_flight = set()
            for item in pending_items:  # fill the window, then top it up as results come back
                in_flight.add(pool.submit(self._one, session, item))
                if len(in_flight) >= workers * WINDOW_PER_WORKER:
                    break
            while in_flight:
                done, in_flight = wait(in_flight, return_when=FIRST_COMPLETED)
                for future in done:
                    yield future.result()
                    item = next(pending_items, None)
                    if item is not None:
                        in_flight.add(pool.submit(self._one, session, item))


def chat_completion(session: httpx.Client, expansion: ExpansionConfig, prompt: str) -> str:
    """The chat model's rewrite of `prompt`, or "" when the endpoint fails (expansion is best effort)."""
    body = {"messages": [{"role": "system", "content": expansion.instruction}, {"role": "user", "content": prompt}]}
    if expansion.model:
        body["model"] = expansion.model

    def parse(response: httpx.Response) -> str:
        try:
            return str(response.json()["choices"][0]["message"]["content"] or "")
        except (ValueError, KeyError, IndexError, TypeError):
            raise BadResponse("bad_response", "no message content in the answer") from None

    url = expansion.base_url.rstrip("/") + "/chat/completions"
    result, _, _, _ = post_with_retries(session, url, body, RetryPolicy(CHAT_RETRIES, 0.5, 10.0), RateLimiter(0),
                                        parse)
    return result or ""
