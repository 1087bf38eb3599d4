"""OpenAI-compatible request bodies (the fields this server reads) and their parsing into `RequestError`s.

Unknown fields (`user`, `quality`, `temperature`, ...) are accepted and ignored, as OpenAI clients send them freely.
A body that is not JSON is a 400; JSON whose fields have the wrong type or are missing is a 422 naming the field.
"""

from __future__ import annotations

import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, StrictStr, ValidationError

from .limits import RequestError

_LENIENT = ConfigDict(extra="ignore")


class ImageGenerationRequest(BaseModel):
    """`POST /v1/images/generations`: OpenAI's fields plus `seed`, `steps`, `guidance_scale` and the decoder's two."""

    model_config = _LENIENT
    prompt: StrictStr
    model: StrictStr | None = None
    n: int | None = None
    size: StrictStr | None = None
    response_format: StrictStr | None = None
    output_format: StrictStr | None = None
    stream: bool | None = None
    # extensions
    seed: int | None = None
    steps: int | None = None
    guidance_scale: float | None = None
    decoder_steps: int | None = None
    decoder_guidance_scale: float | None = None


class ImageURL(BaseModel):
    model_config = _LENIENT
    url: StrictStr
    detail: StrictStr | None = None


class ContentPart(BaseModel):
    """One part of a message's content: `{"type": "text", "text"}` or `{"type": "image_url", "image_url": {"url"}}`."""

    model_config = _LENIENT
    type: StrictStr
    text: StrictStr | None = None
    image_url: ImageURL | StrictStr | None = None  # some clients send the URL string directly


class Message(BaseModel):
    model_config = _LENIENT
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: StrictStr | list[ContentPart] | None = None


class ChatCompletionRequest(BaseModel):
    """`POST /v1/chat/completions`: the question is the last user message's text; the image its `image_url` part."""

    model_config = _LENIENT
    model: StrictStr
    messages: list[Message]
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    n: int | None = None
    stream: bool | None = None


def parse_body(raw: bytes, schema: type[BaseModel]) -> BaseModel:
    """Raw JSON bytes -> a validated request, or a RequestError in OpenAI's shape."""
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RequestError(f"the request body is not valid JSON ({err})", code="invalid_json") from None
    if not isinstance(data, dict):
        raise RequestError("the request body must be a JSON object", code="invalid_json")
    try:
        return schema.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        param = ".".join(str(part) for part in first["loc"]) or None
        if first["type"] == "missing":
            message = f"missing required parameter: {param!r}"
        else:
            message = f"invalid value for {param!r}: {first['msg']}"
        raise RequestError(message, status=422, param=param,
                           code="missing_required_parameter" if first["type"] == "missing" else "invalid_type") from None
