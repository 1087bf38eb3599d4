"""THE prompt template: one place that turns captions and questions into backbone inputs, for training and inference.

Generation (BLIP3-o): the chat-templated instruction + caption, with the assistant generation prompt, then GEN_START and
`num_queries` GEN_QUERY placeholders whose embeddings the backbone replaces with its learnable queries:

    <|im_start|>user\\n please generate image based on the following caption: {caption}<|im_end|>\\n
    <|im_start|>assistant\\n <|gen_start|> <|gen_query|> x num_queries

Rows are LEFT padded, so the queries are the last `num_queries` positions of every row (BLIP3-o trains with right
padding and tracks each row's query start; left padding makes the query block a fixed slice and needs no bookkeeping).

Understanding: a user turn with one image and the question, then the assistant's answer closed by `<|im_end|>`;
in training, optionally more question/answer turns about the same image after it (LLaVA's multi-turn rows: every
answer is supervised, and the image is encoded once for all of them). Inference asks one question, which is exactly the
first turn of a training row.
"""

from __future__ import annotations

import torch

from .instruction import GENERATION_INSTRUCTION
from .tokenizer import GEN_QUERY, GEN_START, IM_END, PAD_TOKEN, token_id

IGNORE_INDEX = -100  # label value that `transformers` losses skip
# Stands in for the user text while rendering the chat template once, to split it into prefix and suffix.
_SENTINEL = "\u0000openblip3o-user-text\u0000"
_ANSWER_SENTINEL = "\u0000openblip3o-answer-text\u0000"


def generation_text(caption: str) -> str:
    """The user text of a generation prompt: BLIP3-o's instruction followed by the caption."""
    if not isinstance(caption, str):
        raise TypeError(f"a caption must be a str, got {type(caption).__name__}")
    return f"{GENERATION_INSTRUCTION} {caption}"


def _user_messages(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def generation_messages(caption: str) -> list[dict]:
    """Chat messages of a generation prompt (one user turn; the assistant turn is opened by the template)."""
    return _user_messages(generation_text(caption))


def understanding_messages(question: str) -> list[dict]:
    """Chat messages of a visual question: one user turn with an image part, then the question."""
    if not isinstance(question, str):
        raise TypeError(f"a question must be a str, got {type(question).__name__}")
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]


def check_user_text(tokenizer, texts: list[str]) -> None:
    """Refuse user text that spells a control token (`<|im_end|>`, `<|gen_query|>`, `<|image_pad|>`...).

    The tokenizer maps those strings to their special ids, so a caption or question containing one would close the
    user turn early or plant a query / image placeholder where the template puts none.
    """
    controls = [t for t in getattr(tokenizer, "added_tokens_encoder", {}) if t]
    for text in texts:
        found = [t for t in controls if t in text]
        if found:
            raise ValueError(f"text contains the control token {found[0]!r}, which only the prompt template may use: "
                             f"{text[:80]!r}")


def _encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _chat_prefix_suffix(tokenizer) -> tuple[list[int], list[int]]:
    """Token ids the chat template puts before and after the user text of a generation prompt.

    The template is rendered once around a sentinel and the three parts are tokenised separately, so truncating the
    user text never cuts the template's own tokens (`<|im_end|>`, the assistant prompt).
    """
    rendered = tokenizer.apply_chat_template(_user_messages(_SENTINEL), tokenize=False, add_generation_prompt=True)
    if rendered.count(_SENTINEL) != 1:
        raise ValueError("the tokenizer's chat template must render the user text exactly once")
    prefix, suffix = rendered.split(_SENTINEL)
    return _encode(tokenizer, prefix), _encode(tokenizer, suffix)


def _follow_up_parts(tokenizer) -> tuple[list[int], list[int]]:
    """Token ids the chat template puts between an answer's `<|im_end|>` and a follow-up question, and after it.

    Rendered once around sentinels (a visual question, an answer, a text-only user turn), so the follow-up turn is
    the template's own, not a hand-written copy: `\\n<|im_start|>user\\n` and `<|im_end|>\\n<|im_start|>assistant\\n`
    for Qwen's template.
    """
    messages = understanding_messages("?") + [{"role": "assistant", "content": _ANSWER_SENTINEL}] + _user_messages(_SENTINEL)
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    after_answer = rendered.split(_ANSWER_SENTINEL)[-1]
    if rendered.count(_SENTINEL) != 1 or not after_answer.startswith(IM_END):
        raise ValueError("the tokenizer's chat template must close an answer with <|im_end|> and render a follow-up once")
    between, suffix = after_answer[len(IM_END):].split(_SENTINEL)
    return _encode(tokenizer, between), _encode(tokenizer, suffix)


def generation_inputs(tokenizer, prompts: list[str], num_queries: int, max_length: int) -> dict[str, torch.Tensor]:
    """Token ids for the generation path, queries last.

    Args:
        tokenizer: a tokenizer with the generation tokens (`add_generation_tokens`) and a chat template.
        prompts: B captions.
        num_queries: N, the number of GEN_QUERY placeholders.
        max_length: the most tokens of the templated prompt (everything before GEN_START). Longer prompts lose the end
            of their user text; the template tokens, GEN_START and the N queries are always kept.
    Returns:
        dict with `input_ids` (B, L) long and `attention_mask` (B, L) long, L <= max_length + 1 + N, left padded:
        `input_ids[:, -N:]` is GEN_QUERY in every row and `input_ids[:, -N-1]` is GEN_START.
    """
    if isinstance(prompts, str) or not isinstance(prompts, (list, tuple)):
        raise TypeError(f"prompts must be a list of str, got {type(prompts).__name__}")
    if not prompts:
        raise ValueError("prompts is empty: give at least one caption")
    if num_queries < 1:
        raise ValueError(f"num_queries must be >= 1, got {num_queries}")
    queries = [token_id(tokenizer, GEN_QUERY)] * num_queries
    rows = [row + queries for row in _generation_rows(tokenizer, prompts, max_length)]
    return _left_pad(rows, token_id(tokenizer, PAD_TOKEN))


def _generation_rows(tokenizer, prompts: list[str], max_length: int) -> list[list[int]]:
    """Templated prompts up to and including GEN_START, user text truncated to fit `max_length` (+ GEN_START)."""
    prefix, suffix = _chat_prefix_suffix(tokenizer)
    budget = max_length - len(prefix) - len(suffix)
    if budget < 1:
        raise ValueError(
            f"max_length {max_length} leaves no room for the caption: the chat template alone takes "
            f"{len(prefix) + len(suffix)} tokens"
        )
    check_user_text(tokenizer, prompts)
    tail = [token_id(tokenizer, GEN_START)]
    return [prefix + _encode(tokenizer, generation_text(p))[:budget] + suffix + tail for p in prompts]


def language_inputs(tokenizer, captions: list[str], max_length: int) -> dict[str, torch.Tensor]:
    """Next-token training rows: the generation template of each caption up to GEN_START, loss on every real token.

    This is the text the generation path reads (the same template, so the states a frozen backbone hands the
    queries were trained on exactly this form), without the query placeholders.
    Returns `input_ids`, `attention_mask`, `labels` (B, L), LEFT padded; labels are IGNORE_INDEX on padding.
    """
    if isinstance(captions, str) or not isinstance(captions, (list, tuple)) or not captions:
        raise ValueError("captions must be a non-empty list of str")
    batch = _left_pad(_generation_rows(tokenizer, captions, max_length), token_id(tokenizer, PAD_TOKEN))
    batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, IGNORE_INDEX)
    return batch


def _left_pad(rows: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """(B, L) ids and mask from ragged rows, padding on the left."""
    length = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, length - len(row) :] = torch.tensor(row, dtype=torch.long)
        attention_mask[i, length - len(row) :] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def understanding_prompts(tokenizer, questions: list[str]) -> list[str]:
    """Chat-templated question prompts ending with the assistant generation prompt (one image placeholder each)."""
    check_user_text(tokenizer, questions)
    return [
        tokenizer.apply_chat_template(understanding_messages(q), tokenize=False, add_generation_prompt=True)
        for q in questions
    ]


def understanding_inputs(processor, images: list, questions: list[str], answers: list[str] | None = None,
                         follow_ups: list[list[tuple[str, str]]] | None = None) -> dict:
    """Processor outputs for visual question answering.

    Args:
        processor: a Qwen2.5-VL processor (image processor + tokenizer with a chat template).
        images: B RGB PIL images (already at the backbone's size).
        questions: B questions.
        answers: B answers for training, or None for generation.
        follow_ups: training only: per row, more (question, answer) turns about the same image after the first
            answer (empty lists allowed); their answers are labelled like the first.
    Returns:
        dict with `input_ids`, `attention_mask`, `mm_token_type_ids` (B, L) (the latter drives Qwen's 3-D mrope
        positions), `pixel_values` (num_patches, C*T*P*P) and `image_grid_thw` (B, 3).
        answers None: LEFT padded prompts ending with `<|im_start|>assistant\\n`, ready for `generate`.
        answers given: RIGHT padded prompt + answer + `<|im_end|>` (+ each follow-up turn), plus `labels` (B, L):
        IGNORE_INDEX everywhere except the answer tokens and each answer's closing `<|im_end|>` (right padding keeps
        every prompt at position 0, so each row's text simply continues after its prompt).
    """
    if not questions or len(images) != len(questions):
        raise ValueError(f"need as many images as questions (and at least one): {len(images)} vs {len(questions)}")
    if answers is not None and len(answers) != len(questions):
        raise ValueError(f"need as many answers as questions: {len(answers)} vs {len(questions)}")
    if follow_ups is not None and (answers is None or len(follow_ups) != len(questions)):
        raise ValueError("follow-up turns need answers and one list per question (an empty list for none)")
    tokenizer = processor.tokenizer
    prompts = understanding_prompts(tokenizer, questions)
    side = "left" if answers is None else "right"
    encoded = processor(images=list(images), text=prompts, padding=True, padding_side=side, return_tensors="pt")
    batch = dict(encoded)
    if answers is None:
        return batch
    closing = token_id(tokenizer, IM_END)
    # the follow-up turn's template tokens, rendered once per batch
    turn_parts = _follow_up_parts(tokenizer) if follow_ups and any(follow_ups) else None
    continuations = [_answer_turns(tokenizer, a, follow_ups[i] if follow_ups else [], closing, turn_parts)
                     for i, a in enumerate(answers)]
    prompt_lengths = encoded["attention_mask"].sum(dim=1).tolist()
    total = max(n + len(ids) for n, (ids, _) in zip(prompt_lengths, continuations))
    pad_id = token_id(tokenizer, PAD_TOKEN)
    input_ids = torch.full((len(answers), total), pad_id, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    mm_token_type_ids = torch.zeros_like(input_ids)  # answers and follow-up turns are text: type 0
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    for i, (n, (ids, supervised)) in enumerate(zip(prompt_lengths, continuations)):
        ids = torch.tensor(ids, dtype=torch.long)
        input_ids[i, :n] = encoded["input_ids"][i, :n]
        mm_token_type_ids[i, :n] = encoded["mm_token_type_ids"][i, :n]
        input_ids[i, n : n + len(ids)] = ids
        labels[i, n : n + len(ids)] = ids.masked_fill(~torch.tensor(supervised), IGNORE_INDEX)
        attention_mask[i, : n + len(ids)] = 1
    batch |= {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "mm_token_type_ids": mm_token_type_ids,
        "labels": labels,
    }
    return batch


def _answer_turns(tokenizer, answer: str, follow_ups: list[tuple[str, str]], closing: int,
                  turn_parts: tuple[list[int], list[int]] | None):
    """The ids after a row's prompt: the answer + <|im_end|>, then each follow-up question turn and its answer
    (`turn_parts`: `_follow_up_parts(tokenizer)`, needed when there are follow-ups).

    Returns (ids, supervised): supervised[j] is True where ids[j] is an answer token or an answer's <|im_end|>.
    """
    ids = _encode(tokenizer, answer) + [closing]
    supervised = [True] * len(ids)
    if follow_ups:
        check_user_text(tokenizer, [q for q, _ in follow_ups])
        between, suffix = turn_parts
        for question, reply in follow_ups:
            turn = between + _encode(tokenizer, question) + suffix
            reply_ids = _encode(tokenizer, reply) + [closing]
            ids += turn + reply_ids
            supervised += [False] * len(turn) + [True] * len(reply_ids)
    return ids, supervised
