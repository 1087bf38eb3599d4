"""Schemathesis over the server's own OpenAPI document (issue 18): every operation, valid and invalid requests alike.

For each generated request: never a 5xx; every 4xx in OpenAI's error schema; and after every operation's run, a good
request is still served. The server runs the real mini pipeline (random weights: the tokenizer, template and batcher
are the real ones) with every generation capped at 2+2 steps so that an accepted request costs a fraction of a second.

CI runs FAST_EXAMPLES per operation; `-m slow` runs SLOW_EXAMPLES.
"""

from __future__ import annotations

import base64
import io
from collections import Counter

import pytest

pytest.importorskip("fastapi", reason="needs the serve extras: pip install -e '.[serve]'")
schemathesis = pytest.importorskip("schemathesis", reason="needs the test extras: pip install -e '.[test]'")

import torch
from hypothesis import HealthCheck, settings
from PIL import Image

from openblip3o import BLIP3oPipeline
from openblip3o.serving.api import create_app
from openblip3o.serving.limits import Limits

FAST_EXAMPLES, SLOW_EXAMPLES = 40, 400
MAX_STEPS = 2
LIMITS = Limits(max_n=2, max_prompt_chars=200, max_image_bytes=50_000, max_image_pixels=128 * 128, max_batch=4,
                max_wait_ms=5, max_output_side=128, max_new_tokens=4)
ERROR_KEYS = {"message", "type", "param", "code"}
FUZZ_SETTINGS = dict(deadline=None, derandomize=True, database=None,
                     suppress_health_check=list(HealthCheck))  # slow on a shared CPU, filtered strategies


class FewSteps:
    """The mini pipeline with every call capped at MAX_STEPS DiT and decoder steps; everything else passes through."""

    def __init__(self, pipe):
        self._pipe = pipe

    def __getattr__(self, name):
        return getattr(self._pipe, name)

    def __call__(self, *args, num_inference_steps=None, decoder_num_inference_steps=None, **kwargs):
        return self._pipe(*args, num_inference_steps=min(num_inference_steps or MAX_STEPS, MAX_STEPS),
                          decoder_num_inference_steps=min(decoder_num_inference_steps or MAX_STEPS, MAX_STEPS),
                          **kwargs)


@pytest.fixture(scope="module")
def app():
    torch.manual_seed(0)
    application = create_app(FewSteps(BLIP3oPipeline.from_preset("mini")), "mini", limits=LIMITS)
    yield application
    application.state.batcher.close()


@pytest.fixture(scope="module")
def api_schema(app):
    return schemathesis.openapi.from_asgi("/openapi.json", app)


schema = schemathesis.pytest.from_fixture("api_schema")


def good_requests_are_served(app) -> None:
    """One valid request of each kind: the server (its batcher thread above all) is still up."""
    from starlette.testclient import TestClient

    with TestClient(app) as client:  # its lifespan: schemathesis ran (and ended) its own around the fuzzing
        serve_both(client)


def serve_both(client) -> None:
    png = io.BytesIO()
    Image.new("RGB", (16, 16), "red").save(png, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(png.getvalue()).decode()
    images = client.post("/v1/images/generations", json={"prompt": "a red circle", "n": 2})
    assert images.status_code == 200 and len(images.json()["data"]) == 2, images.text
    chat = client.post("/v1/chat/completions", json={"model": "mini", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "what color?"}, {"type": "image_url", "image_url": {"url": url}}]}], "max_tokens": 3})
    assert chat.status_code == 200 and isinstance(chat.json()["choices"][0]["message"]["content"], str), chat.text


STATUSES: Counter = Counter()  # (operation, status) over this module's fuzzing


def check(case) -> None:
    response = case.call()
    STATUSES[f"{case.method} {case.path}", response.status_code] += 1
    assert response.status_code < 500, (case.as_curl_command(), response.status_code, response.text)
    if response.status_code >= 400:
        payload = response.json()
        assert set(payload) == {"error"} and set(payload["error"]) == ERROR_KEYS, (case.as_curl_command(), payload)
        assert isinstance(payload["error"]["message"], str) and payload["error"]["message"]


@schema.parametrize()
@settings(max_examples=FAST_EXAMPLES, **FUZZ_SETTINGS)
def test_no_5xx_and_openai_errors(case):
    check(case)


def test_good_requests_after_fuzzing(app):
    """Runs after the fuzz tests (file order): the server that took them all still serves."""
    print(dict(sorted(STATUSES.items())))
    if STATUSES:  # the fuzzing reached the model, not only the checks in front of it
        assert STATUSES["POST /v1/images/generations", 200] > 0, STATUSES
    good_requests_are_served(app)


@pytest.mark.slow
@schema.parametrize()
@settings(max_examples=SLOW_EXAMPLES, **FUZZ_SETTINGS)
def test_no_5xx_and_openai_errors_long(case):
    check(case)
