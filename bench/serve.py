"""The server's micro-batching: 16 concurrent clients vs the same 16 requests sent one after another.

    python bench/serve.py [--model DIR] [--clients 16] [--steps 30] [--decoder-steps 50] [--wait-ms 20] [--threads 2]

Starts the real app (uvicorn, 127.0.0.1, a free port) in this process and sends real HTTP requests with the standard
library: `POST /v1/images/generations` (n=1 each) and `POST /v1/chat/completions` with an image. Prints images/s (and
answers/s) for both patterns, their ratio, and how many pipeline batches the server ran (from `/health`).
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import platform
import socket
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import torch
import uvicorn

from openblip3o import BLIP3oPipeline
from openblip3o.data.shapes import ShapesWorld
from openblip3o.serving.api import create_app
from openblip3o.serving.limits import Limits

REQUEST_TIMEOUT_S = 600


def post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_S) as response:
        return json.loads(response.read())


def health(base: str) -> dict:
    with urllib.request.urlopen(base + "/health", timeout=REQUEST_TIMEOUT_S) as response:
        return json.loads(response.read())


def start_server(app) -> tuple[uvicorn.Server, str]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True).start()
    while not server.started:
        time.sleep(0.01)
    return server, f"http://127.0.0.1:{sock.getsockname()[1]}"


def measure(base: str, bodies: list[tuple[str, dict]], clients: int) -> tuple[float, int]:
    """Seconds for all requests (`clients` at a time) and the pipeline batches the server ran meanwhile."""
    before = health(base)["batches"]
    start = time.perf_counter()
    if clients == 1:
        for path, body in bodies:
            post(base + path, body)
    else:
        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(lambda item: post(base + item[0], item[1]), bodies))
    return time.perf_counter() - start, health(base)["batches"] - before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="saved pipeline folder (default: the mini preset, random weights)")
    parser.add_argument("--clients", type=int, default=16, help="requests per measurement (and concurrent clients)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--decoder-steps", type=int, default=50)
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--wait-ms", type=float, default=20.0, help="the batcher's gathering window")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pipe = BLIP3oPipeline.from_pretrained(args.model) if args.model else BLIP3oPipeline.from_preset("mini")
    limits = Limits(max_batch=args.clients, max_wait_ms=args.wait_ms, max_queue=4 * args.clients)
    server, base = start_server(create_app(pipe, "bench", limits=limits))

    world = ShapesWorld("eval", seed=0)
    examples = [world[i] for i in range(args.clients)]
    settings = {"steps": args.steps, "guidance_scale": args.guidance, "decoder_steps": args.decoder_steps,
                "decoder_guidance_scale": args.guidance}
    generations = [("/v1/images/generations", {"prompt": e.annotation["prompt"], "seed": i, **settings})
                   for i, e in enumerate(examples)]

    def chat(example) -> dict:
        buffer = io.BytesIO()
        example.image.save(buffer, format="PNG")
        url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
        question = example.annotation["vqa"][0]["question"]
        return {"model": "bench", "messages": [{"role": "user", "content": [
            {"type": "text", "text": question}, {"type": "image_url", "image_url": {"url": url}}]}]}

    chats = [("/v1/chat/completions", chat(e)) for e in examples]
    measure(base, generations[:2], 2)  # warm-up: first calls allocate and tune kernels
    measure(base, chats[:2], 2)
    rows = []
    for task, bodies in (("generate", generations), ("answer", chats)):
        sequential, sequential_batches = measure(base, bodies, 1)
        concurrent, concurrent_batches = measure(base, bodies, args.clients)
        rows.append((task, "sequential", sequential, sequential_batches, 1.0))
        rows.append((task, f"{args.clients} concurrent", concurrent, concurrent_batches, sequential / concurrent))
    server.should_exit = True

    n = args.clients
    print(f"openblip3o server benchmark: {pipe.config.name} preset, {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}, batch window {args.wait_ms:g} ms")
    print(f"generation: {args.steps} DiT steps + {args.decoder_steps} decoder steps, CFG {args.guidance} on both, "
          f"{n} requests of 1 image at {pipe.config.decoder.image_size} px; answers: {n} chat requests with an image")
    print(f"{'task':<10} {'clients':<15} {'seconds':>8} {'per second':>11} {'batches':>8} {'speed-up':>9}")
    for task, mode, seconds, batches, ratio in rows:
        print(f"{task:<10} {mode:<15} {seconds:>8.2f} {n / seconds:>11.2f} {batches:>8} {ratio:>8.2f}x")


if __name__ == "__main__":
    main()
