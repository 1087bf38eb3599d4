"""Load (issue 18): 32 concurrent image requests, then 32 concurrent chat requests, against a live server on the mini
pipeline (random weights, 2+2 steps); all served, the batcher batches them, and the process's RSS growth is reported
(`-s` prints it) and bounded.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("fastapi", reason="needs the serve extras: pip install -e '.[serve]'")
pytest.importorskip("uvicorn", reason="needs the serve extras: pip install -e '.[serve]'")

import torch
from PIL import Image

from openblip3o import BLIP3oPipeline
from openblip3o.serving.api import create_app
from openblip3o.serving.limits import Limits
from test_server import FAST, chat_messages, data_url, http, live_server, png_bytes

CONCURRENT = 32
RSS_GROWTH_LIMIT_MB = 400  # measured 2026-12-03 (2 shared cores): +79 MB over both rounds, p95 2.9 s / 0.55 s


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024


def test_32_concurrent_image_and_chat_requests_are_all_served():
    torch.manual_seed(0)
    pipe = BLIP3oPipeline.from_preset("mini")
    app = create_app(pipe, "mini", limits=Limits(max_wait_ms=50))
    image = data_url(png_bytes(Image.new("RGB", (64, 64), "blue")))
    with live_server(app) as url:
        http(url + "/v1/images/generations", {"prompt": "warm up", **FAST})  # first-call allocations off the figure
        before = rss_mb()

        def generate(i):
            start = time.monotonic()
            status, body = http(url + "/v1/images/generations", {"prompt": f"a photo of {i % 4 + 1} red stars",
                                                                  "seed": i, **FAST})
            return status, len(body.get("data", [])), time.monotonic() - start

        def chat(i):
            start = time.monotonic()
            status, body = http(url + "/v1/chat/completions", {"model": "mini", "max_tokens": 2,
                                                               "messages": chat_messages(image, f"how many stars? {i}")})
            return status, len(body.get("choices", [])), time.monotonic() - start

        with ThreadPoolExecutor(CONCURRENT) as pool:
            images = list(pool.map(generate, range(CONCURRENT)))
            after_images = rss_mb()
            chats = list(pool.map(chat, range(CONCURRENT)))
        after = rss_mb()
        health = http(url + "/health")[1]
    assert [(s, n) for s, n, _ in images] == [(200, 1)] * CONCURRENT
    assert [(s, n) for s, n, _ in chats] == [(200, 1)] * CONCURRENT
    assert health["largest_batch"] > 1 and health["batches"] < 2 * CONCURRENT + 1, health

    def p95(results):
        return sorted(t for *_, t in results)[int(0.95 * CONCURRENT) - 1]

    print(f"\nload: {CONCURRENT} images p95 {p95(images):.2f} s, {CONCURRENT} chats p95 {p95(chats):.2f} s; RSS "
          f"{before:.0f} -> {after_images:.0f} -> {after:.0f} MB (+{after - before:.0f}); {health}")
    assert after - before < RSS_GROWTH_LIMIT_MB
