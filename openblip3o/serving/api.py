"""The OpenAI-compatible HTTP server: `create_app(pipe, model_id)` -> a FastAPI app.

    POST /v1/images/generations   prompt, n, size, response_format=b64_json (+ seed, steps, guidance_scale, ...)
    POST /v1/chat/completions     a question with one image as an `image_url` data URL
    GET  /v1/models, /v1/models/{id}
    GET  /health                  (never needs the API key: load balancers probe it)

Every request goes through one `MicroBatcher`, whose single worker thread owns the pipeline. Every error, including
404/405 on unknown routes and 500s, is OpenAI's `{"error": {"message", "type", "param", "code"}}`, and no bad request
can stop the server: errors are answered, the worker survives anything a batch raises. POST bodies must be sent as
`Content-Type: application/json` (415 otherwise). A client that disconnects, while sending its body or while waiting
for its result, is answered with nothing (there is no one to answer): its job leaves the batcher's queue, or its batch
stops at the next denoising step when no other client waits on it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import io
import logging
import time
import uuid

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from ..config import SamplingSettings
from .batcher import MicroBatcher
from .limits import Limits, RequestError, check_range, check_text, decode_image_url, parse_size
from .schemas import ChatCompletionRequest, ImageGenerationRequest, parse_body

log = logging.getLogger(__name__)
OWNER = "openblip3o"
MAX_SEED = 2**32 - 1  # torch accepts more, but 32 bits is what other image APIs take
PUBLIC_PATHS = ("/health",)  # reachable without the API key
DEFAULT_MAX_NEW_TOKENS = 8  # the mini answers are a word or two


DISCONNECT_POLL_S = 0.1  # how often a waiting request checks whether its client is still there
CLIENT_CLOSED = 499  # nginx's "client closed request": logged, never seen by the client, who has gone


class ClientGone(RequestError):
    """The client disconnected before its answer was ready; nothing it sent was wrong."""

    def __init__(self, when: str):
        super().__init__(f"the client disconnected {when}", status=CLIENT_CLOSED, code="client_disconnected")


def _error(err: RequestError) -> JSONResponse:
    headers = {"Retry-After": "1"} if err.status == 429 else None
    return JSONResponse(err.to_json(), status_code=err.status, headers=headers)


async def _read_body(request: Request, limit: int) -> bytes:
    """The JSON body, refused with 415 unless declared as JSON, and with 413 as soon as it passes `limit` bytes
    (whatever Content-Length claims)."""
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type != "application/json":
        raise RequestError(f"send the body as JSON with 'Content-Type: application/json' (got "
                           f"{media_type or 'no Content-Type'!r})", status=415, code="unsupported_media_type")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError(f"request body is {declared} bytes; the limit is {limit}", status=413,
                           code="request_too_large")
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise RequestError(f"request body exceeds {limit} bytes", status=413, code="request_too_large")
            chunks.append(chunk)
    except ClientDisconnect:  # it closed before sending all it announced: no one is left to answer
        raise ClientGone(f"after sending {size} bytes of its body") from None
    return b"".join(chunks)


async def _until_disconnected(request: Request) -> None:
    while not await request.is_disconnected():
        await asyncio.sleep(DISCONNECT_POLL_S)


def _json_body(model) -> dict:
    """The OpenAPI requestBody of a route that parses `model` itself (`parse_body`: OpenAI's error shapes, the size
    limit before reading): FastAPI cannot see such a body, so the schema says it, and clients and fuzzers read it."""
    return {"requestBody": {"required": True, "content": {"application/json": {
        "schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}}}


def _bounds(model_id: str, limits: Limits) -> dict[str, dict[str, dict]]:
    """What this server accepts beyond each field's type, as JSON Schema keywords: {model: {field: keywords}}."""
    steps, guidance = {"minimum": 1, "maximum": limits.max_steps}, {"minimum": 0, "maximum": limits.max_guidance}
    return {
        "ImageGenerationRequest": {
            "prompt": {"minLength": 1, "maxLength": limits.max_prompt_chars}, "model": {"enum": [model_id]},
            "n": {"minimum": 1, "maximum": limits.max_n}, "size": {"pattern": r"^(auto|\d{1,5}x\d{1,5})$"},
            "response_format": {"enum": ["b64_json"]}, "output_format": {"enum": ["png"]}, "stream": {"enum": [False]},
            "seed": {"minimum": 0, "maximum": MAX_SEED}, "steps": steps, "decoder_steps": steps,
            "guidance_scale": guidance, "decoder_guidance_scale": guidance,
        },
        "ChatCompletionRequest": {
            "model": {"enum": [model_id]}, "max_tokens": {"minimum": 1, "maximum": limits.max_new_tokens},
            "max_completion_tokens": {"minimum": 1, "maximum": limits.max_new_tokens}, "n": {"enum": [1]},
            "stream": {"enum": [False]},
        },
    }


def _document_bodies(app: FastAPI, model_id: str, limits: Limits) -> None:
    """Add the request models (and the models they nest) to the OpenAPI document's components, with this server's
    bounds on their values (the served model id, `n`, lengths, steps): clients, and fuzzers, read what is accepted."""
    from pydantic.json_schema import models_json_schema

    original = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = original()
            _, defs = models_json_schema([(ImageGenerationRequest, "validation"), (ChatCompletionRequest, "validation")],
                                         ref_template="#/components/schemas/{model}")
            defs = defs.get("$defs", {})
            for model, fields in _bounds(model_id, limits).items():
                for field, keywords in fields.items():
                    prop = defs[model]["properties"][field]
                    # `T | None` is anyOf [T, null]: the bounds go on the T branch
                    target = next((b for b in prop.get("anyOf", []) if b.get("type") != "null"), prop)
                    target.update(keywords)
            schema.setdefault("components", {}).setdefault("schemas", {}).update(defs)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi


def _png_b64(image, side: int) -> str:
    from PIL import Image

    if image.size != (side, side):
        image = image.resize((side, side), Image.Resampling.NEAREST)  # flat shapes stay crisp when upscaled
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _question_and_image(body: ChatCompletionRequest):
    """The last user message's text, and the one image of the conversation's latest user turn that has one."""
    users = [m for m in body.messages if m.role == "user"]
    if not users:
        raise RequestError("messages must contain a user message", param="messages", code="invalid_messages")
    content = users[-1].content
    parts = [] if content is None else content if isinstance(content, list) else []
    question = content if isinstance(content, str) else " ".join(p.text or "" for p in parts if p.type == "text")
    image_url = None
    for message in reversed(users):  # a follow-up question may refer to an image sent earlier
        if isinstance(message.content, list):
            urls = [p.image_url for p in message.content if p.type == "image_url"]
            if len(urls) > 1:
                raise RequestError("send one image per question", param="messages", code="too_many_images")
            if urls:
                image_url = urls[0]
                break
    if image_url is None:
        raise RequestError("this model answers questions about an image: include an image_url content part",
                           param="messages", code="missing_image")
    url = image_url if isinstance(image_url, str) else image_url.url
    return question, url


def create_app(pipe, model_id: str = "mini", *, api_key: str | None = None, limits: Limits | None = None,
               batcher: MicroBatcher | None = None) -> FastAPI:
    """An app serving `pipe` as `model_id`. With `api_key`, every /v1 route needs `Authorization: Bearer KEY`."""
    limits = limits or Limits()
    batcher = batcher or MicroBatcher(pipe, limits)
    created = int(time.time())
    native = pipe.config.decoder.image_size

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        batcher.start()  # running already unless an earlier lifespan of this app closed it
        yield
        await run_in_threadpool(batcher.close)

    app = FastAPI(title="openblip3o", summary="OpenAI-compatible BLIP3-o server", lifespan=lifespan)
    _document_bodies(app, model_id, limits)
    app.state.batcher, app.state.model_id, app.state.limits = batcher, model_id, limits

    def refusal(headers: Headers) -> RequestError | None:
        """Why a /v1 request without the right `Authorization: Bearer KEY` is refused (None: it may pass)."""
        header = headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if not header or scheme.lower() != "bearer" or not token.strip():
            return RequestError("missing API key: send 'Authorization: Bearer KEY'", status=401, code="missing_api_key")
        # Constant-time comparison: response timing must not reveal how much of a guess was right.
        if not hmac.compare_digest(token.strip().encode(), api_key.encode()):
            return RequestError("incorrect API key provided", status=401, code="invalid_api_key")
        return None

    def authenticate(inner):
        # A plain ASGI middleware rather than @app.middleware("http"): Starlette's BaseHTTPMiddleware hides the
        # client's disconnect from the handler, which must see it to abandon the request's job.
        async def middleware(scope, receive, send):
            if scope["type"] == "http" and api_key is not None and scope["path"] not in PUBLIC_PATHS:
                err = refusal(Headers(scope=scope))
                if err is not None:
                    await _error(err)(scope, receive, send)
                    return
            await inner(scope, receive, send)

        return middleware

    app.add_middleware(authenticate)

    @app.exception_handler(RequestError)
    async def request_error(request, err: RequestError):
        if isinstance(err, ClientGone):
            log.info("%s %s: %s", request.method, request.url.path, err.message)
        return _error(err)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request, err: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(err.status_code)
        return _error(RequestError(str(err.detail), status=err.status_code, code=code))

    @app.exception_handler(Exception)
    async def server_error(_request, err: Exception):
        log.exception("request failed")
        return _error(RequestError(f"internal error: {type(err).__name__}", status=500, type="server_error"))

    def check_model(name: str | None) -> None:
        if name is not None and name != model_id:
            raise RequestError(f"The model `{name}` does not exist or you do not have access to it.", status=404,
                               param="model", code="model_not_found")

    async def run(future, request: Request):
        """The batcher's result; a client that disconnects meanwhile abandons its job (see `MicroBatcher.abandon`)."""
        result, gone = asyncio.wrap_future(future), asyncio.ensure_future(_until_disconnected(request))
        try:
            await asyncio.wait((result, gone), return_when=asyncio.FIRST_COMPLETED)
            if not result.done():
                raise ClientGone("while its request was queued or running")
            return result.result()
        except ValueError as err:  # the pipeline's own input checks: still the client's request
            raise RequestError(str(err)) from None
        except (RequestError, asyncio.CancelledError):
            raise
        except Exception as err:
            # Answered here as a handled error: an exception reaching uvicorn would also drop the keep-alive connection.
            log.error("batch failed: %s: %s", type(err).__name__, err, exc_info=err)
            raise RequestError(f"the model failed on this batch ({type(err).__name__})", status=500,
                               type="server_error", code="batch_failed") from None
        finally:
            gone.cancel()
            if not future.done():  # disconnected, or this handler was cancelled: nobody will read the result
                batcher.abandon(future)
                result.cancel()

    def model_card() -> dict:
        return {"id": model_id, "object": "model", "created": created, "owned_by": OWNER}

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": model_id, "queue": batcher.queue_length, **batcher.stats}

    @app.get("/v1/models")
    async def list_models():
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{name:path}")
    async def retrieve_model(name: str):
        check_model(name)
        return model_card()

    @app.post("/v1/images/generations", openapi_extra=_json_body(ImageGenerationRequest))
    async def generate_images(request: Request):
        body = parse_body(await _read_body(request, limits.max_body_bytes), ImageGenerationRequest)
        check_model(body.model)
        prompt = check_text(body.prompt, limits.max_prompt_chars, "prompt", "prompt")
        n = check_range(1 if body.n is None else body.n, 1, limits.max_n, "n")
        if body.response_format not in (None, "b64_json"):
            raise RequestError("only response_format 'b64_json' is supported (this server hosts no image URLs)",
                               param="response_format", code="unsupported_value")
        if body.output_format not in (None, "png"):
            raise RequestError("only output_format 'png' is supported", param="output_format", code="unsupported_value")
        if body.stream:
            raise RequestError("streaming is not supported", param="stream", code="unsupported_value")
        side = parse_size(body.size, native, limits)
        check_range(body.seed, 0, MAX_SEED, "seed")
        for param, value in (("steps", body.steps), ("decoder_steps", body.decoder_steps)):
            check_range(value, 1, limits.max_steps, param)
        for param, value in (("guidance_scale", body.guidance_scale),
                             ("decoder_guidance_scale", body.decoder_guidance_scale)):
            check_range(value, 0.0, limits.max_guidance, param)
        settings = SamplingSettings(body.steps, body.guidance_scale, body.decoder_steps, body.decoder_guidance_scale)
        images = await run(batcher.generate(prompt, n, body.seed, settings), request)
        encoded = await run_in_threadpool(lambda: [_png_b64(image, side) for image in images])
        return {"created": int(time.time()), "data": [{"b64_json": b64} for b64 in encoded],
                "output_format": "png", "size": f"{side}x{side}"}

    @app.post("/v1/chat/completions", openapi_extra=_json_body(ChatCompletionRequest))
    async def chat_completions(request: Request):
        body = parse_body(await _read_body(request, limits.max_body_bytes), ChatCompletionRequest)
        check_model(body.model)
        if body.stream:
            raise RequestError("streaming is not supported", param="stream", code="unsupported_value")
        if body.n not in (None, 1):  # answers are greedy: more choices would be copies of the first
            raise RequestError("only n=1 is supported", param="n", code="unsupported_value")
        budget = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        param = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
        default = min(DEFAULT_MAX_NEW_TOKENS, limits.max_new_tokens)  # a server may cap answers below the default
        max_new_tokens = check_range(default if budget is None else budget, 1, limits.max_new_tokens,
                                     param)
        question, url = _question_and_image(body)
        question = check_text(question, limits.max_question_chars, "messages", "question")
        image = await run_in_threadpool(decode_image_url, url, limits, "messages")
        answer = await run(batcher.answer(image, question, max_new_tokens), request)
        prompt_tokens, completion_tokens = _count_tokens(pipe, question), _count_tokens(pipe, answer)
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
            "model": model_id,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": answer, "refusal": None},
                         "logprobs": None,
                         "finish_reason": "length" if completion_tokens >= max_new_tokens else "stop"}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        }

    return app


def _count_tokens(pipe, text: str) -> int:
    """Token count for `usage` (text tokens only; the image's patch tokens are not counted)."""
    try:
        return len(pipe.model.backbone.tokenizer(text, add_special_tokens=False)["input_ids"])
    except (AttributeError, TypeError, KeyError):  # a pipeline without the usual backbone still serves
        return 0
