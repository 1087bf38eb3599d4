"""OpenAI-compatible request bodies (the fields this server reads) and their parsing into `RequestError`s.

Unknown fields (`user`, `quality`, `temperature`, ...) are accepted and ignored, as OpenAI clients send them freely.
Known fields are strict (pydantic's strict mode): `"n": "2"` or `"n": true` is a 422, not a silent conversion; an integer
is accepted where a number is expected. A body that is not JSON (or nested past Python's recursion limit, or carrying an
integer beyond Python's digit limit) is a 400; JSON whose fields have the wrong type or are missing is a 422 naming the
field, with the parameter path of the most specific error (`messages.0.content.0.image_url.url`, not the first branch of
a union that was tried).
"""

from __future__ import annotations

import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from .limits import RequestError

_LENIENT = ConfigDict(extra="ignore", strict=True)  # unknown fields ignored, known ones strict


class ImageGenerationRequest(BaseModel):
    """`POST /v1/images/generations`: OpenAI's fields plus `seed`, `steps`, `guidance_scale` and the decoder's two."""

    model_config = _LENIENT
    prompt: str
    model: str | None = None
    n: int | None = None
    size: str | None = None
    response_format: str | None = None
    output_format: str | None = None
    stream: bool | None = None
    # extensions
    seed: int | None = None
    steps: int | None = None
    guidance_scale: float | None = None
    decoder_steps: int | None = None
    decoder_guidance_scale: float | None = None


class ImageURL(BaseModel):
    model_config = _LENIENT
    url: str
    detail: str | None = None


class ContentPart(BaseModel):
    """One part of a message's content: `{"type": "text", "text"}` or `{"type": "image_url", "image_url": {"url"}}`."""

    model_config = _LENIENT
    type: str
    text: str | None = None
    image_url: ImageURL | str | None = None  # some clients send the URL string directly


class Message(BaseModel):
    model_config = _LENIENT
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None


class ChatCompletionRequest(BaseModel):
    """`POST /v1/chat/completions`: the question is the last user message's text; the image its `image_url` part."""

    model_config = _LENIENT
    model: str
    messages: list[Message]
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    n: int | None = None
    stream: bool | None = None


_MODELS = (ImageGenerationRequest, ImageURL, ContentPart, Message, ChatCompletionRequest)
_FIELDS = frozenset(name for model in _MODELS for name in model.model_fields)


def _param(loc: tuple) -> str | None:
    """A pydantic error location as the client's parameter path: list indices and field names, without the union
    branch tags pydantic inserts (`str`, `list[ContentPart]`, `ImageURL`)."""
    return ".".join(str(part) for part in loc if isinstance(part, int) or part in _FIELDS) or None


def parse_body(raw: bytes, schema: type[BaseModel]) -> BaseModel:
    """Raw JSON bytes -> a validated request, or a RequestError in OpenAI's shape."""
    try:
        data = json.loads(raw)
    except RecursionError:
        raise RequestError("the request body is nested too deeply", code="invalid_json") from None
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError, and ints past sys.get_int_max_str_digits()
        raise RequestError(f"the request body is not valid JSON ({err})", code="invalid_json") from None
    if not isinstance(data, dict):
        raise RequestError("the request body must be a JSON object", code="invalid_json")
    try:
        return schema.model_validate(data)
    except ValidationError as err:
        # The deepest error is the most specific: for `"image_url": {}` it is the missing `url`, not the `str` branch.
        errors = err.errors(include_url=False, include_input=False)
        first = max(errors, key=lambda e: len(_param(e["loc"]) or ""))
        param = _param(first["loc"])
        if first["type"] == "missing":
            message = f"missing required parameter: {param!r}"
        else:
            message = f"invalid value for {param!r}: {first['msg']}"
        raise RequestError(message, status=422, param=param,
                           code="missing_required_parameter" if first["type"] == "missing" else "invalid_type") from None
