"""The OpenAI-compatible server, driven by the official `openai` client against live servers on 127.0.0.1.

One mini pipeline (random weights, 2+2 steps per request) serves the module from a uvicorn thread; the API-key test runs
the real `openblip3o serve` command in a subprocess; queue overflow and worker crashes use a stub pipeline that blocks.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest

pytest.importorskip("fastapi", reason="needs the serve extras: pip install -e '.[serve]'")
uvicorn = pytest.importorskip("uvicorn", reason="needs the serve extras: pip install -e '.[serve]'")
openai = pytest.importorskip("openai", reason="needs the openai client: pip install -e '.[test]'")

import numpy as np
import torch
from PIL import Image

from openblip3o import BLIP3oPipeline
from openblip3o.serving.api import create_app
from openblip3o.serving.limits import Limits

FAST = {"steps": 2, "decoder_steps": 2}  # extension fields: seconds, not minutes, per test
LIMITS = Limits(max_n=4, max_prompt_chars=200, max_image_bytes=100_000, max_image_pixels=256 * 256, max_batch=8,
                max_wait_ms=50)
SERVER_START_S = 120  # the subprocess imports torch and builds the model on a shared CPU
ERROR_KEYS = {"message", "type", "param", "code"}


@contextlib.contextmanager
def live_server(app):
    """uvicorn in a thread on a socket bound to a free port (bound before start: no port race)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started, "uvicorn did not start"
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def http(url: str, body: bytes | dict | None = None, headers: dict | None = None) -> tuple[int, dict]:
    """A raw request (for what the official client refuses to send); returns (status, JSON body)."""
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def data_url(raw: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(raw).decode()}"


def chat_messages(url: str, question: str = "what color is the circle?") -> list[dict]:
    return [{"role": "user", "content": [{"type": "text", "text": question},
                                         {"type": "image_url", "image_url": {"url": url}}]}]


@pytest.fixture(scope="module")
def pipe():
    torch.manual_seed(0)
    return BLIP3oPipeline.from_preset("mini")


@pytest.fixture(scope="module")
def server(pipe):
    app = create_app(pipe, "mini", limits=LIMITS)
    with live_server(app) as url:
        yield SimpleNamespace(url=url, app=app,
                              client=openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120))


def decode(item) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(item.b64_json)))
    assert image.format == "PNG"
    image.load()
    return image


def max_pixel_difference(a: Image.Image, b: Image.Image) -> int:
    """Largest 0-255 difference; batched float maths may round one level apart from the same image made alone."""
    return int(np.abs(np.asarray(a.convert("RGB"), dtype=int) - np.asarray(b.convert("RGB"), dtype=int)).max())


def test_images_generate_returns_pngs_of_the_right_count_and_size(server):
    result = server.client.images.generate(model="mini", prompt="a photo of a red circle", n=3, size="64x64",
                                           response_format="b64_json", extra_body={**FAST, "seed": 7})
    images = [decode(item) for item in result.data]
    assert len(images) == 3 and all(image.size == (64, 64) for image in images)
    again = server.client.images.generate(prompt="a photo of a red circle", size="128x128",
                                          response_format="b64_json", extra_body={**FAST, "seed": 7})
    assert len(again.data) == 1  # n defaults to 1; the default model is used without `model`
    big = decode(again.data[0])
    assert big.size == (128, 128)
    assert max_pixel_difference(big.resize((64, 64), Image.Resampling.NEAREST), images[0]) <= 1  # same seed


def test_concurrent_requests_share_one_batch_and_match_their_solo_images(server):
    def one(seed):
        result = server.client.images.generate(prompt=f"a photo of {seed} stars", response_format="b64_json",
                                               extra_body={**FAST, "seed": seed})
        return decode(result.data[0])

    before = http(server.url + "/health")[1]["batches"]
    with ThreadPoolExecutor(6) as pool:
        together = list(pool.map(one, range(6)))
    health = http(server.url + "/health")[1]
    assert health["largest_batch"] >= 2 and health["batches"] - before < 6, health
    assert max_pixel_difference(one(3), together[3]) <= 1  # per-image seeds: alone == in a batch (up to rounding)
    assert max_pixel_difference(together[2], together[3]) > 1


def test_chat_completion_answers_a_question_about_an_image(server, pipe):
    image = pipe("a photo of a blue square", generator=[torch.Generator().manual_seed(1)], num_inference_steps=2,
                 decoder_num_inference_steps=2, progress=False).images[0]
    reply = server.client.chat.completions.create(model="mini", messages=chat_messages(data_url(png_bytes(image))),
                                                  max_tokens=6)
    assert reply.object == "chat.completion" and reply.model == "mini"
    content = reply.choices[0].message.content
    assert content == pipe.answer([image], ["what color is the circle?"], max_new_tokens=6)[0]
    assert reply.usage.prompt_tokens > 0


def test_models_and_health(server):
    assert [m.id for m in server.client.models.list().data] == ["mini"]
    assert server.client.models.retrieve("mini").id == "mini"
    with pytest.raises(openai.NotFoundError) as caught:
        server.client.models.retrieve("gpt-image-1")
    assert caught.value.body["code"] == "model_not_found"
    status, body = http(server.url + "/health")
    assert status == 200 and body["status"] == "ok" and body["model"] == "mini"


def test_bad_requests_each_get_their_4xx_and_the_server_keeps_serving(server):
    client, images_url, chat_url = server.client, server.url + "/v1/images/generations", server.url + "/v1/chat/completions"
    noise = Image.frombytes("RGB", (200, 200), os.urandom(200 * 200 * 3))  # incompressible: 120 kB > 100 kB
    bomb = Image.new("RGB", (2000, 2000))  # a few kB on the wire, 4 Mpx once decoded
    small = png_bytes(Image.new("RGB", (32, 32), "red"))

    def gen(**kw):
        return lambda: client.images.generate(**{"prompt": "a photo of a star", **kw, "extra_body": FAST})

    def chat(messages, **kw):
        return lambda: client.chat.completions.create(model=kw.pop("model", "mini"), messages=messages, **kw)

    client_cases = [
        (gen(model="dall-e-3"), 404, "model_not_found"),
        (gen(n=0), 400, "out_of_range"),
        (gen(n=LIMITS.max_n + 1), 400, "out_of_range"),
        (gen(prompt="   "), 400, "empty_prompt"),
        (gen(prompt="star " * 100), 400, "prompt_too_long"),
        (gen(size="128x64"), 400, "invalid_size"),
        (gen(response_format="url"), 400, "unsupported_value"),
        (chat(chat_messages(data_url(small)), model="gpt-4o"), 404, "model_not_found"),
        (chat([{"role": "user", "content": "what is this?"}]), 400, "missing_image"),
        (chat(chat_messages("https://example.com/a.png")), 400, "invalid_image_url"),
        (chat(chat_messages("data:image/png;base64,@@@@")), 400, "invalid_image_url"),
        (chat(chat_messages(data_url(b"not an image at all"))), 422, "invalid_image"),
        (chat(chat_messages(data_url(png_bytes(bomb)))), 413, "image_too_large"),
        (chat(chat_messages(data_url(png_bytes(noise)))), 413, "image_too_large"),
        (chat(chat_messages(data_url(small)), max_tokens=10_000), 400, "out_of_range"),
    ]
    for call, status, code in client_cases:
        with pytest.raises(openai.APIStatusError) as caught:
            call()
        assert caught.value.status_code == status, (code, caught.value.body)
        assert set(caught.value.body) == ERROR_KEYS and caught.value.body["code"] == code
    raw_cases = [
        (images_url, b"{not json", 400, "invalid_json"),
        (images_url, {"n": 1}, 422, "missing_required_parameter"),
        (images_url, {"prompt": 12}, 422, "invalid_type"),
        (images_url, {"prompt": "a star", "steps": 0}, 400, "out_of_range"),
        (chat_url, b"x" * (LIMITS.max_body_bytes + 1), 413, "request_too_large"),
        (server.url + "/v1/nothing", {}, 404, "not_found"),
    ]
    for url, body, status, code in raw_cases:
        got, payload = http(url, body)
        assert got == status and set(payload["error"]) == ERROR_KEYS and payload["error"]["code"] == code, payload
    good = client.images.generate(prompt="a photo of a star", n=2, response_format="b64_json", extra_body=FAST)
    assert [decode(item).size for item in good.data] == [(64, 64)] * 2
    reply = client.chat.completions.create(model="mini", messages=chat_messages(data_url(small)))
    assert isinstance(reply.choices[0].message.content, str)


class BlockingPipe:
    """Stands in for the pipeline: blocks each call until released, or raises, to test the queue and the worker."""

    config = SimpleNamespace(decoder=SimpleNamespace(image_size=8))

    def __init__(self):
        self.entered, self.release, self.fail = threading.Event(), threading.Event(), False

    def __call__(self, prompt, generator=None, **_):
        self.entered.set()
        self.release.wait(30)
        if self.fail:
            raise RuntimeError("boom")
        return SimpleNamespace(images=[Image.new("RGB", (8, 8)) for _ in prompt])


def test_full_queue_gets_429_and_a_crashing_batch_gets_500_then_serving_continues():
    stub = BlockingPipe()
    limits = Limits(max_queue=1, max_wait_ms=0)
    with live_server(create_app(stub, "stub", limits=limits)) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=30)
        with ThreadPoolExecutor(2) as pool:
            running = pool.submit(client.images.generate, prompt="first", response_format="b64_json")
            assert stub.entered.wait(10)  # the first job is in the worker, blocked
            deadline = time.monotonic() + 10
            queued = pool.submit(client.images.generate, prompt="second", response_format="b64_json")
            while http(url + "/health")[1]["queue"] != 1:
                assert time.monotonic() < deadline
                time.sleep(0.01)
            with pytest.raises(openai.RateLimitError) as caught:
                client.images.generate(prompt="third", response_format="b64_json")
            assert caught.value.body["code"] == "queue_full"
            stub.fail = True
            stub.release.set()
            with pytest.raises(openai.InternalServerError):
                running.result()
            with pytest.raises(openai.InternalServerError):
                queued.result()
        stub.fail = False
        assert len(client.images.generate(prompt="after", n=2, response_format="b64_json").data) == 2


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_serve_command_with_api_key_rejects_missing_and_wrong_keys():
    port, key = free_port(), "sk-test-123"
    env = {**os.environ, "OPENBLIP3O_API_KEY": key}  # the key travels by environment, as documented
    proc = subprocess.Popen([sys.executable, "-m", "openblip3o", "serve", "--port", str(port), "--log-level", "warning"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                if http(url + "/health")[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.25)
        status, body = http(url + "/v1/models")
        assert status == 401 and body["error"]["code"] == "missing_api_key"
        wrong = openai.OpenAI(base_url=url + "/v1", api_key="sk-wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError) as caught:
            wrong.models.list()
        assert caught.value.body["code"] == "invalid_api_key"
        with pytest.raises(openai.AuthenticationError):
            wrong.images.generate(prompt="a photo of a star", response_format="b64_json")
        right = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=120)
        assert [m.id for m in right.models.list().data] == ["mini"]
        result = right.images.generate(prompt="a photo of a star", response_format="b64_json", extra_body=FAST)
        assert decode(result.data[0]).size == (64, 64)
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
