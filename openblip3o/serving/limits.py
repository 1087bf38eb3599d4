"""Request limits and safe input decoding, shared by the HTTP server, the demo and the CLI.

Every limit is a named field of `Limits`, so `openblip3o serve` can expose them and tests can shrink them. A limit that
is broken raises `RequestError`, which carries the HTTP status and OpenAI's error fields; the server turns it into
`{"error": {"message", "type", "param", "code"}}` and the CLI into a one-line message.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import warnings
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

# Defaults. The mini model makes 64 px images at ~0.3 s each on a CPU: these bound one request to seconds of work.
MAX_IMAGES_PER_REQUEST = 8  # OpenAI allows n <= 10; 8 keeps one request inside one default batch
MAX_PROMPT_CHARS = 1000  # the backbone truncates at 128 tokens anyway; longer text is a client bug, not a prompt
MAX_QUESTION_CHARS = 1000
MAX_IMAGE_BYTES = 8 * 1024 * 1024  # decoded image file bytes
MAX_IMAGE_PIXELS = 4096 * 4096  # checked from the header, before any pixel is decoded (decompression bombs)
MAX_QUEUE = 64  # requests waiting for the worker; more get 429 instead of an unbounded wait
MAX_BATCH = 16  # images (or questions) per pipeline call
MAX_WAIT_MS = 20.0  # how long the first request of a batch waits for company
MAX_STEPS = 200  # diffusion steps per request (DiT and decoder alike)
MAX_GUIDANCE = 50.0
MAX_NEW_TOKENS = 64  # answer length cap (the mini answers are one or two words)
MAX_OUTPUT_SIDE = 1024  # `size` may upscale the native image up to this side
BODY_TEXT_ALLOWANCE = 64 * 1024  # the JSON around an image: messages, options

DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[^,;]*)*?);base64,(?P<data>.*)$", re.DOTALL)


@dataclass(frozen=True)
class Limits:
    """The bounds one server (or demo) enforces; see the module constants for the reasons behind the defaults."""

    max_n: int = MAX_IMAGES_PER_REQUEST
    max_prompt_chars: int = MAX_PROMPT_CHARS
    max_question_chars: int = MAX_QUESTION_CHARS
    max_image_bytes: int = MAX_IMAGE_BYTES
    max_image_pixels: int = MAX_IMAGE_PIXELS
    max_queue: int = MAX_QUEUE
    max_batch: int = MAX_BATCH
    max_wait_ms: float = MAX_WAIT_MS
    max_steps: int = MAX_STEPS
    max_guidance: float = MAX_GUIDANCE
    max_new_tokens: int = MAX_NEW_TOKENS
    max_output_side: int = MAX_OUTPUT_SIDE

    @property
    def max_body_bytes(self) -> int:
        """A JSON body carries at most one base64 image (4/3 of its bytes) plus text; longer bodies are refused unread."""
        return self.max_image_bytes * 4 // 3 + BODY_TEXT_ALLOWANCE


class RequestError(Exception):
    """A client mistake, with everything OpenAI's error JSON needs."""

    def __init__(self, message: str, status: int = 400, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error"):
        # Messages may quote client input; a lone surrogate in one could not be encoded as the UTF-8 JSON response.
        message = message.encode("utf-8", "backslashreplace").decode("utf-8")
        super().__init__(message)
        self.message, self.status, self.param, self.code, self.type = message, status, param, code, type

    def to_json(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def check_text(text, limit: int, param: str, what: str) -> str:
    """A non-empty string of at most `limit` characters, stripped."""
    if not isinstance(text, str):
        raise RequestError(f"{param} must be a string", param=param, code="invalid_type")
    try:
        text.encode("utf-8")  # JSON's "\ud800" and a shell's undecodable bytes arrive as lone surrogates
    except UnicodeEncodeError as err:
        raise RequestError(f"{what} is not valid Unicode text: a lone surrogate ({text[err.start]!a}) at character "
                           f"{err.start}", param=param, code="invalid_" + what.replace(" ", "_")) from None
    text = text.strip()
    if not text:
        raise RequestError(f"{what} is empty", param=param, code="empty_" + what.replace(" ", "_"))
    if len(text) > limit:
        raise RequestError(f"{what} is {len(text)} characters long; the limit is {limit}", param=param,
                           code=what.replace(" ", "_") + "_too_long")
    return text


def check_range(value, low, high, param: str):
    """`low <= value <= high`, or a 400 naming the parameter."""
    if value is not None and not low <= value <= high:
        raise RequestError(f"{param} must be between {low} and {high}, got {value}", param=param, code="out_of_range")
    return value


def decode_image_bytes(data: bytes, limits: Limits, param: str = "image") -> Image.Image:
    """Bytes -> decoded image, refusing oversized files and decompression bombs before decoding any pixel."""
    if len(data) > limits.max_image_bytes:
        raise RequestError(f"image is {len(data)} bytes; the limit is {limits.max_image_bytes}", status=413,
                           param=param, code="image_too_large")
    try:
        with warnings.catch_warnings():
            # PIL warns (then errors) past its own global pixel cap; our cap is checked explicitly just below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))  # lazy: reads the header only
            width, height = image.size
            if width * height > limits.max_image_pixels:
                raise RequestError(f"image is {width}x{height} pixels; the limit is {limits.max_image_pixels} pixels",
                                   status=413, param=param, code="image_too_large")
            image.load()
            # The mode is kept: the backbone converts to RGB itself, compositing transparency on black as trained.
            return image
    except Image.DecompressionBombError:
        # Pillow's own cap (twice its MAX_IMAGE_PIXELS) fires in Image.open, before ours can: name ours, the one in force.
        raise RequestError(f"image is larger than the limit of {limits.max_image_pixels} pixels", status=413,
                           param=param, code="image_too_large") from None
    except UnidentifiedImageError:  # its message names the BytesIO object it was given, which says nothing
        raise RequestError("image could not be decoded: not a PNG, JPEG, WebP or other image format Pillow reads",
                           status=422, param=param, code="invalid_image") from None
    except (OSError, SyntaxError, ValueError) as err:
        # 422: the request is well formed, but what it carries cannot be processed.
        raise RequestError(f"image could not be decoded ({type(err).__name__}: {err})", status=422, param=param,
                           code="invalid_image") from None


def decode_image_url(url, limits: Limits, param: str = "image_url") -> Image.Image:
    """A `data:image/...;base64,...` URL -> image. Remote URLs are refused: the server never fetches on a client's behalf."""
    if not isinstance(url, str):
        raise RequestError("image_url.url must be a string", param=param, code="invalid_type")
    match = DATA_URL.match(url)
    if match is None:
        raise RequestError("image_url must be a data URL (data:image/png;base64,...); remote URLs are not fetched",
                           param=param, code="invalid_image_url")
    payload = match.group("data")
    # Refuse before decoding: base64 is 4/3 the size of what it carries.
    if len(payload) * 3 // 4 > limits.max_image_bytes + 3:
        raise RequestError(f"image is larger than {limits.max_image_bytes} bytes", status=413, param=param,
                           code="image_too_large")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError("image_url data is not valid base64", param=param, code="invalid_image_url") from None
    return decode_image_bytes(data, limits, param)


def load_image_file(path, limits: Limits | None = None) -> Image.Image:
    """An image file from disk with the same checks as an upload; mistakes raise ValueError (one line in the CLI)."""
    from pathlib import Path

    path, limits = Path(path), limits or Limits()
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such image file")
    if path.stat().st_size > limits.max_image_bytes:
        raise ValueError(f"{path}: {path.stat().st_size} bytes; the limit is {limits.max_image_bytes}")
    try:
        return decode_image_bytes(path.read_bytes(), limits, param=str(path))
    except RequestError as err:
        raise ValueError(f"{path}: {err.message}") from None


def parse_size(size, native: int, limits: Limits) -> int:
    """OpenAI's `size` ("WxH" or "auto") -> the square output side. The model draws `native` px; larger squares are
    upscaled (nearest neighbour keeps the flat shapes crisp); non-square or smaller sizes are refused."""
    if size is None or size == "auto":
        return native
    match = re.fullmatch(r"(\d{1,5})x(\d{1,5})", str(size))
    if match is None:
        raise RequestError(f"size must be 'auto' or 'WxH', got {size!r}", param="size", code="invalid_size")
    width, height = int(match.group(1)), int(match.group(2))
    if width != height or not native <= width <= limits.max_output_side:
        raise RequestError(f"size must be square, from {native}x{native} to {limits.max_output_side}x"
                           f"{limits.max_output_side}, got {size}", param="size", code="invalid_size")
    return width
