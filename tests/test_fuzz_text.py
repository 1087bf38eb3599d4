"""Hypothesis over the text paths (issue 18): whatever a client or a shell sends as a prompt or a question is either
refused with a client error, or tokenized, templated and run through the model without an exception of another kind;
whatever arguments `generate` and `ask` get, they end with output or one `error:` line and exit code 2.

The model is the mini with random weights: tokenizer, chat template and processor are the real ones.
"""

from __future__ import annotations

import functools
import os
import string
import tempfile

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image
from typer.testing import CliRunner

from openblip3o import BLIP3oPipeline
from openblip3o.cli import app
from openblip3o.models.template import generation_inputs, understanding_inputs
from openblip3o.serving.limits import MAX_PROMPT_CHARS, RequestError, check_text

SETTINGS = dict(deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
RESERVED = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
            "<|video_pad|>", "<unk>", "<|gen_start|>", "<|gen_query|>"]  # the mini tokenizer's added tokens

# Any code point, lone surrogates included (JSON's "\ud800" escapes reach the server as such), plus the tokenizer's
# control tokens spelled out in the text.
SURROGATES = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF, exclude_categories=())
PIECES = st.one_of(st.characters(), st.sampled_from(RESERVED), st.sampled_from([" ", "red", "circle", "\n"]))
TEXT = st.lists(PIECES, max_size=40).map("".join)
TEXT_OR_SURROGATES = st.lists(st.one_of(PIECES, SURROGATES), max_size=40).map("".join)
# What a POSIX shell can hand Python in argv: any code point but surrogates, undecodable bytes as U+DC80..U+DCFF.
ARGV_CHARS = st.one_of(st.characters(exclude_categories=("Cs",), exclude_characters="\0"),
                       st.characters(min_codepoint=0xDC80, max_codepoint=0xDCFF, exclude_categories=()))
ARGV_TEXT = st.text(ARGV_CHARS, max_size=30)


@pytest.fixture(scope="module")
def pipe():
    torch.manual_seed(0)
    return BLIP3oPipeline.from_preset("mini")


@functools.cache
def template_ids(backbone) -> torch.Tensor:
    """The generation template's ids around a one-word caption (the control ids the template itself writes)."""
    return generation_inputs(backbone.tokenizer, ["x"], backbone.num_queries, backbone.cfg.max_prompt_tokens)["input_ids"][0]


def control_count(backbone, ids: torch.Tensor) -> int:
    # unknown words map to <unk>, which is no control token
    controls = set(backbone.tokenizer.added_tokens_encoder.values()) - {backbone.tokenizer.unk_token_id}
    return sum(int(i) in controls for i in ids)


def spells_control_token(text: str) -> bool:
    return any(token in text for token in RESERVED)


def accepted(text: str) -> str | None:
    """The text as the server and the CLI accept it, or None when they refuse it (a 400, one error line)."""
    try:
        return check_text(text, MAX_PROMPT_CHARS, "prompt", "prompt")
    except RequestError as err:
        assert err.status == 400 and err.message.encode("utf-8")  # the refusal itself is encodable
        return None


@settings(max_examples=500, **SETTINGS)
@given(text=TEXT_OR_SURROGATES)
def test_any_text_is_refused_or_templated(pipe, text):
    checked = accepted(text)
    event("refused" if checked is None else "templated")
    if checked is None:
        return
    backbone = pipe.model.backbone
    n = backbone.num_queries
    image = Image.new("RGB", (backbone.cfg.image_size,) * 2)
    if spells_control_token(checked):
        # The template's one refusal: a control token typed into the text (the server's 400, one CLI error line).
        with pytest.raises(ValueError, match="control token"):
            generation_inputs(backbone.tokenizer, [checked], n, backbone.cfg.max_prompt_tokens)
        with pytest.raises(ValueError, match="control token"):
            understanding_inputs(backbone.processor, [image], [checked])
        return
    batch = generation_inputs(backbone.tokenizer, [checked], n, backbone.cfg.max_prompt_tokens)
    assert batch["input_ids"].shape[1] <= backbone.cfg.max_prompt_tokens + n + 1
    # no control id beyond the template's own: the user text adds none
    assert control_count(backbone, batch["input_ids"][0]) <= control_count(backbone, template_ids(backbone))
    understanding_inputs(backbone.processor, [image], [checked])


@settings(max_examples=60, **SETTINGS)
@given(prompt=TEXT, question=TEXT)
def test_any_accepted_text_runs_through_the_model(pipe, prompt, question):
    event(f"prompt {'refused' if accepted(prompt) is None else 'run'}")
    event(f"question {'refused' if accepted(question) is None else 'run'}")
    if (prompt := accepted(prompt)) is not None and spells_control_token(prompt):
        with pytest.raises(ValueError, match="control token"):
            pipe.model.backbone.condition([prompt])
    elif prompt is not None:
        condition, mask = pipe.model.backbone.condition([prompt])
        assert torch.isfinite(condition).all() and mask.all()
    if (question := accepted(question)) is not None:
        try:
            answers = pipe.answer([Image.new("RGB", (64, 64))], [question], max_new_tokens=1)
        except ValueError:  # a client error (400 in the server, one line in the CLI), as above
            assert spells_control_token(question)
            return
        assert len(answers) == 1 and isinstance(answers[0], str)


# --- CLI arguments --------------------------------------------------------------------------------------------------
runner = CliRunner()
NUMBERS = st.one_of(st.integers(-10**6, 10**6).map(str), st.floats(allow_nan=True).map(str), ARGV_TEXT)
SAFE_NAME = st.text(st.sampled_from(string.ascii_letters + string.digits + "-_. \udcff\u00e9"), min_size=1,
                    max_size=12).filter(lambda name: name not in (".", ".."))


def assert_clean_exit(result) -> None:
    """Exit 0, or exit 2 with one `error:` line; never an exception (a traceback)."""
    if isinstance(result.exception, SystemExit) or result.exception is None:
        assert result.exit_code in (0, 2), result.output
        if result.exit_code == 2:
            lines = [line for line in result.output.splitlines() if line.strip() and not line.startswith("seed ")]
            assert len(lines) == 1 and (lines[0].startswith("error: ") or lines[0].startswith("Usage")
                                        or "Error" in lines[0] or "Try" in lines[0]), result.output
        return
    raise AssertionError(f"{type(result.exception).__name__}: {result.exception}\n{result.output}")


def usage_lines(result) -> bool:
    return "Usage:" in result.output  # click's own refusal of a malformed option: a usage block, exit 2


@settings(max_examples=150, **SETTINGS)
@given(prompts=st.lists(ARGV_TEXT, min_size=1, max_size=3), n=NUMBERS, steps=NUMBERS, cfg=NUMBERS, out=SAFE_NAME,
       grid=st.booleans())
def test_generate_arguments_never_traceback(prompts, n, steps, cfg, out, grid):
    with tempfile.TemporaryDirectory() as folder:
        args = ["generate", *prompts, "--n", n, "--steps", steps, "--cfg", cfg, "--out", os.path.join(folder, out),
                "--model", os.path.join(folder, "no-such-model")]  # every check runs; nothing is ever generated
        result = runner.invoke(app, args + (["--grid"] if grid else []))
    if usage_lines(result):
        assert result.exit_code == 2
        return
    assert result.exit_code == 2, result.output  # a refusal, or the missing model: never a run
    assert_clean_exit(result)


@settings(max_examples=100, **SETTINGS)
@given(image=SAFE_NAME, question=ARGV_TEXT, tokens=NUMBERS, content=st.binary(max_size=64))
def test_ask_arguments_never_traceback(image, question, tokens, content):
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, image)
        with open(path, "wb") as stream:
            stream.write(content)
        result = runner.invoke(app, ["ask", path, question, "--max-new-tokens", tokens,
                                     "--model", os.path.join(folder, "no-such-model")])
    if usage_lines(result):
        assert result.exit_code == 2
        return
    assert result.exit_code == 2, result.output
    assert_clean_exit(result)
