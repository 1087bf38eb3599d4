"""The curation pipeline: prompt plan and de-duplication, a fault-injecting endpoint (429/500, timeouts, cut and
non-image bodies), a run killed with SIGKILL and resumed, the project's own server, and the local backend.

The fault endpoint is an `http.server` on 127.0.0.1. Transient faults are drawn from a seeded generator per request and
always recover within the retries; permanent ones (a 400, a too-small image) are a pure function of the prompt, so an
interrupted-and-resumed run must end with exactly the same shards and failure log as an uninterrupted one.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from PIL import Image

from openblip3o.config import ConfigError
from openblip3o.curation import curate, deduplicate, load_config
from openblip3o.curation.client import RateLimiter
from openblip3o.curation.items import Outcome
from openblip3o.curation.prompts import PromptSource, load_categories
from openblip3o.curation.writer import FAILURES_NAME, FailureLog, shard_ids, shard_paths
from openblip3o.data.shards import ShardReader

API_KEY = "sk-curate-secret-42"
FAST_RETRY = {"retries": 12, "backoff_base_s": 0.005, "backoff_max_s": 0.05, "timeout_s": 0.4}
SLOW_S = 1.0  # a "slow" answer: longer than FAST_RETRY's timeout
GOOD_SIDE, SMALL_SIDE = 48, 16  # the filter's minimum is 32
KILL_WAIT_S = 60


def _h(text: str) -> int:
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)


def permanent_fault(prompt: str) -> str | None:
    """The fault a prompt always gets, whatever the attempt: part of the expected result."""
    if _h(prompt) % 9 == 0:
        return "http_400"
    if _h(prompt) % 7 == 0:
        return "filtered_min_size"
    return None


def png_for(prompt: str, seed: int, side: int) -> bytes:
    colour = tuple(_h(f"{prompt}|{seed}|{c}") % 256 for c in "rgb")
    buffer = io.BytesIO()
    Image.new("RGB", (side, side), colour).save(buffer, format="PNG")
    return buffer.getvalue()


class FaultHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # keep pytest's output clean
        pass

    def _send(self, status: int, body: bytes, headers: dict | None = None, length: int | None = None):
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body) if length is None else length))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, data: dict, headers: dict | None = None):
        self._send(status, json.dumps(data).encode(), headers)

    def do_POST(self):
        server = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.headers.get("Authorization") != f"Bearer {API_KEY}":
            return self._json(401, {"error": {"message": "bad key", "code": "invalid_api_key"}})
        if self.path.endswith("/chat/completions"):
            text = "A vivid picture: " + body["messages"][-1]["content"]
            return self._json(200, {"choices": [{"message": {"role": "assistant", "content": text}}]})
        prompt, seed = body["prompt"], body["seed"]
        with server.lock:
            server.requests += 1
            roll = server.rng.random()
        time.sleep(server.delay_s)
        fault = permanent_fault(prompt)
        if fault == "http_400":
            return self._json(400, {"error": {"message": "prompt refused", "code": "content_policy"}})
        if roll < 0.08:
            return self._json(429, {"error": {"message": "slow down"}}, {"Retry-After": "0"})
        if roll < 0.16:
            return self._json(500, {"error": {"message": "boom"}})
        if roll < 0.19:
            time.sleep(SLOW_S)
        elif roll < 0.24:  # a body cut short: Content-Length promises more than comes, then the socket closes
            self.close_connection = True
            return self._send(200, b'{"data": [{"b64_json": "iVBOR', length=4096)
        elif roll < 0.29:
            return self._json(200, {"data": [{"b64_json": base64.b64encode(b"<html>not an image").decode()}]})
        elif roll < 0.32:
            return self._send(200, b"<html>gateway hiccup</html>")
        side = SMALL_SIDE if fault == "filtered_min_size" else GOOD_SIDE
        self._json(200, {"data": [{"b64_json": base64.b64encode(png_for(prompt, seed, side)).decode()}]})


class QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):  # a client that timed out closes first: expected here
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


@contextlib.contextmanager
def fault_server(seed: int = 0, delay_s: float = 0.0):
    server = QuietServer(("127.0.0.1", 0), FaultHandler)
    server.rng, server.lock, server.requests, server.delay_s = random.Random(seed), threading.Lock(), 0, delay_s
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server, f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


def write_config(path: Path, **fields) -> Path:
    path.write_text(yaml.safe_dump(fields))
    return path


def fault_config(out: Path, url: str, **overrides) -> dict:
    return {"out_dir": str(out), "scale": "full", "num_items": 40, "seed": 3, "shard_size": 6, "progress": False,
            "endpoint": {"base_url": url, "model": "fault-model", "concurrency": 4, **FAST_RETRY}, **overrides}


def result_set(out: Path) -> tuple[dict, dict]:
    """{id: sha of image bytes} over the shards (each id at most once), and {id: reason} from the failure log."""
    images: dict[str, str] = {}
    for path in shard_paths(out):
        for sample in ShardReader(path, shuffle=False):
            assert sample.key not in images, f"{sample.key} is in two shards"
            buffer = io.BytesIO()
            sample.image.save(buffer, format="PNG")
            images[sample.key] = hashlib.sha256(buffer.getvalue()).hexdigest()
    lines = (out / FAILURES_NAME).read_text().splitlines() if (out / FAILURES_NAME).exists() else []
    entries = [json.loads(line) for line in lines if line.strip().endswith("}")]
    failures = {e["id"]: e["reason"] for e in entries}
    assert len(failures) == len(entries), "an item is in the failure log twice"
    return images, failures


def check_complete(out: Path, manifest: dict) -> tuple[dict, dict]:
    """Every planned item ends in exactly one of shards / failure log, with the failure the prompt dictates."""
    images, failures = result_set(out)
    plan = [json.loads(line) for line in (out / "prompts.jsonl").read_text().splitlines()[1:]]
    planned = {f"{i:06d}-{manifest['config']['seed'] + i}": rec["prompt"] for i, rec in enumerate(plan)}
    assert not set(images) & set(failures)
    assert set(images) | set(failures) == set(planned)
    assert failures == {i: permanent_fault(p) for i, p in planned.items() if permanent_fault(p)}
    assert manifest["accepted"] == len(images) and manifest["failed"] == len(failures) and manifest["missing"] == 0
    assert sum(manifest["failures"].values()) == len(failures)
    return images, failures


# ------------------------------------------------------------------------------------------------ prompts


def test_dedup_exact_near_and_order_sensitive():
    texts = ["A red cube and a blue ball.", "a red cube and a  blue ball", "a blue cube and a red ball",
             "a photo of a red circle", "a photo of a red circle!", "a photo of a red square"]
    assert deduplicate(texts, near_threshold=0.85) == [texts[0], texts[2], texts[3], texts[5]]
    assert deduplicate(texts, near_threshold=None) == [texts[0], texts[2], texts[3], texts[4], texts[5]]


def test_plan_full_table_and_mini_weights(tmp_path):
    table = load_categories()
    assert {"human_gestures", "common_objects", "landmarks", "simple_text", "occupations", "compositional",
            "aesthetic"} <= set(table)
    full = load_config(None, out_dir=str(tmp_path), num_items=50, categories={"landmarks": 1, "simple_text": 3})
    from openblip3o.curation.prompts import build_prompts

    prompts, _ = build_prompts(full)
    assert len({p["prompt"].lower() for p in prompts}) == 50
    assert {p["category"] for p in prompts} == {"landmarks", "simple_text"}
    scores = tmp_path / "summary.json"
    scores.write_text(json.dumps({"overall": 0.5, "tags": {t: 1.0 for t in ("single_object", "two_object", "colors",
                                                                           "position", "color_attr")} | {"counting": 0.0}}))
    mini = PromptSource(load_config(None, scale="mini", scores=str(scores)))
    draws = [mini.draw(random.Random(i))[0] for i in range(300)]
    assert draws.count("counting") > 200  # weight 1.05 vs 0.05 for each mastered tag
    with pytest.raises(ConfigError, match="unknown key endpoint.bogus"):
        load_config(write_config(tmp_path / "bad.yaml", endpoint={"bogus": 1}))
    with pytest.raises(ValueError, match="unknown tag"):
        PromptSource(load_config(None, scale="mini", categories={"landmarks": 1.0}))


def test_rate_limiter_spaces_requests():
    limiter, start = RateLimiter(50.0), time.monotonic()
    for _ in range(6):
        limiter.wait()
    assert time.monotonic() - start >= 5 / 50 - 0.01


# --------------------------------------------------------------------------------------------- fault endpoint


def test_fault_endpoint_every_item_once_expansion_and_no_key_leak(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENBLIP3O_CURATE_API_KEY", API_KEY)  # the documented way to pass the key
    with fault_server(seed=1) as (server, url):
        config = load_config(write_config(tmp_path / "c.yaml", **fault_config(
            tmp_path / "out", url, expansion={"base_url": url, "model": "chat"})))
        manifest = curate(config)
        requests = server.requests
        again = curate(config)  # idempotent: nothing left to make, nothing sent
        assert server.requests == requests and again["this_run"]["attempted"] == 0
    images, failures = check_complete(tmp_path / "out", manifest)
    assert images and failures and requests > manifest["planned"]  # faults happened and were retried
    assert all(r.startswith("A vivid picture: ") for r in [json.loads(x)["prompt"] for x in
                                                              (tmp_path / "out/prompts.jsonl").read_text().splitlines()[1:]])
    sample = next(iter(ShardReader(tmp_path / "out", shuffle=False)))
    assert sample.meta["source_model"] == "fault-model" and sample.text == sample.meta["prompt"]
    assert {"category", "seed", "time"} <= set(sample.meta)
    for path in (tmp_path / "out").iterdir():
        assert API_KEY.encode() not in path.read_bytes(), path


# ------------------------------------------------------------------------------------------------- kill


def test_killed_run_resumes_to_the_same_set_as_an_uninterrupted_one(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENBLIP3O_CURATE_API_KEY", API_KEY)
    with fault_server(seed=2, delay_s=0.05) as (_, url):
        whole = tmp_path / "whole"
        reference = curate(load_config(write_config(tmp_path / "w.yaml", **fault_config(whole, url))))
        killed = tmp_path / "killed"
        cfg = write_config(tmp_path / "k.yaml", **fault_config(killed, url, endpoint={
            "base_url": url, "model": "fault-model", "concurrency": 2, **FAST_RETRY}))
        proc = subprocess.Popen([sys.executable, "-m", "openblip3o", "curate", "--config", str(cfg)],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + KILL_WAIT_S
        while not (killed.is_dir() and shard_paths(killed)):  # kill as soon as the first shard is final
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        output = proc.stdout.read()
        assert not (killed / "manifest.json").exists(), "the run finished before it could be killed"
        done_before = {i for p in shard_paths(killed) for i in shard_ids(p)}
        failed_before = set(FailureLog(killed).entries)
        with open(killed / FAILURES_NAME, "a") as stream:  # as if the kill had cut a failure line in half
            stream.write('{"id": "000001-4", "rea')
        resumed = curate(load_config(cfg))
    assert API_KEY.encode() not in output
    assert 0 < len(done_before) < resumed["planned"]
    assert resumed["this_run"]["attempted"] == resumed["planned"] - len(done_before) - len(failed_before)
    assert check_complete(killed, resumed) == check_complete(whole, reference)


# ------------------------------------------------------------------------------ the project's server, local


@pytest.fixture(scope="module")
def mini_pipe():
    torch = pytest.importorskip("torch")
    from openblip3o import BLIP3oPipeline

    torch.manual_seed(0)
    return BLIP3oPipeline.from_preset("mini")


def test_against_the_projects_own_server(tmp_path, mini_pipe):
    pytest.importorskip("fastapi")
    uvicorn = pytest.importorskip("uvicorn")
    from openblip3o.serving.api import create_app

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(create_app(mini_pipe, "mini"), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    try:
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
        config = load_config(None, out_dir=str(tmp_path), scale="mini", num_items=4, progress=False, base_url=url,
                             model="mini")
        config.endpoint.extra_body, config.endpoint.concurrency = {"steps": 1, "decoder_steps": 1}, 4
        manifest = curate(config)
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
    assert manifest["accepted"] == 4 and manifest["failed"] == 0 and manifest["this_run"]["requests"] == 4
    samples = list(ShardReader(tmp_path, shuffle=False))
    assert sorted(s.key for s in samples) == [f"{i:06d}-{i}" for i in range(4)]
    assert all(s.image.size == (64, 64) and s.meta["source_model"] == "mini" for s in samples)


def test_local_backend_and_clip_filter_hook(tmp_path, mini_pipe):
    from openblip3o.curation.local import LocalBackend, target_encoder_scorer

    config = load_config(None, out_dir=str(tmp_path / "local"), scale="mini", num_items=3, backend="local",
                         progress=False)
    config.local.steps, config.local.decoder_steps, config.local.batch_size = 1, 1, 2
    backend = LocalBackend(config.local, pipe=mini_pipe)
    manifest = curate(config, backend=backend)
    assert manifest["accepted"] == 3 and manifest["source_model"] == "local:mini"
    scores = target_encoder_scorer(mini_pipe)([s.image for s in ShardReader(tmp_path / "local", shuffle=False)],
                                              ["a photo of a red circle"] * 3)
    assert len(scores) == 3 and all(0 <= s <= 100 for s in scores)

    class StubBackend:  # images without a model: the filter is what is under test
        source = "stub"

        def run(self, items):
            for item in items:
                yield Outcome(item, image=Image.new("RGB", (40, 40)), data=png_for(item.prompt, item.seed, 40))

    def stub_scorer(images, prompts):  # "counting" prompts score low
        return [5.0 if any(w in p for w in ("two ", "three ", "four ")) else 50.0 for p in prompts]

    clip = load_config(None, out_dir=str(tmp_path / "clip"), scale="mini", num_items=30, progress=False)
    clip.filters.clip_score_min = 20.0
    manifest = curate(clip, backend=StubBackend(), scorer=stub_scorer)
    _, failures = result_set(tmp_path / "clip")
    assert manifest["failures"] == {"filtered_clip_score": len(failures)} and 0 < len(failures) < 30
    assert all(s.meta["clip_score"] == 50.0 for s in ShardReader(tmp_path / "clip", shuffle=False))


def test_render_backend_makes_the_mini_instruction_set_exactly(tmp_path):
    """`--backend render`: every image shows its prompt (the rule scorer passes it), the GenEval record is stored,
    a rerun adds nothing, and a full-scale plan is refused."""
    from openblip3o.data.shapes.rules import evaluate
    from openblip3o.evaluation.geneval.detector import detect

    config = load_config(None, out_dir=str(tmp_path), scale="mini", num_items=40, images_per_prompt=2,
                         backend="render", shard_size=16, progress=False)
    manifest = curate(config)
    assert manifest["source_model"] == "shapesworld-render"
    assert manifest["accepted"] == 80 and manifest["failed"] == 0 and len(manifest["shards"]) == 5
    samples = list(ShardReader(tmp_path, shuffle=False))
    assert len(samples) == 80 and len({s.key for s in samples}) == 80
    assert {s.meta["category"] for s in samples} == {s.meta["metadata"]["tag"] for s in samples}
    verdicts = [evaluate(s.meta["metadata"], detect(s.image)[0]) for s in samples]
    assert all(ok for ok, _ in verdicts), [reason for ok, reason in verdicts if not ok][:3]
    assert all(s.text == s.meta["metadata"]["prompt"] for s in samples)
    # the two images of one prompt are different scenes (their own seeds)
    first, second = (s for s in samples if s.meta["index"] == 0)
    assert first.image.tobytes() != second.image.tobytes()
    assert curate(config)["this_run"]["attempted"] == 0
    with pytest.raises(ConfigError, match="backend 'render'.*scale 'mini'"):
        load_config(None, out_dir=str(tmp_path / "full"), scale="full", backend="render")
