"""How much of the prompt the generator's condition carries: linear probes, pair differences, generator sensitivity.

The condition is what the DiT cross-attends to: `model.backbone.condition(prompts)`, (B, N, D) query states (with
`backbone.condition_embeddings`, the template's token embeddings before them: (B, L, D) and a mask). Probes and pair
differences read the last N positions, the query states: what the language model made of the prompt (the token
embeddings carry the words by construction). The generator sees the whole condition. Three views, for any pipeline
(mini or full scale):

- probe: a linear probe reads one word's value (colour, shape, count, relation) from the flattened condition. It is
  fitted on one half of the prompts and scored on the other, disjoint half (and the other way round), so test prompts
  are unseen combinations (e.g. colour-shape pairs) while every label appears in both halves.
- pair_difference: ||a - b|| / ||a|| between the conditions of two prompts that differ in one word of one kind.
- generator: how much the DiT's output moves when one word of the prompt changes, and when the condition is zeroed
  (the classifier-free guidance branch as trained), from the same noise at the same sigmas.
"""

from __future__ import annotations

import random
from collections import defaultdict
from contextlib import contextmanager

import torch
import torch.nn.functional as F

from ..data.shapes.prompts import record
from ..data.shapes.world import COLORS, COUNTING_NUMBERS, RELATIONS, SHAPES

KINDS: tuple[str, ...] = ("color", "shape", "count", "relation")
# Sigmas the generator is probed at, averaged: mid to high noise, where the condition decides the sample (near
# sigma 0 the noisy input already shows the target and the condition barely matters).
SIGMAS: tuple[float, ...] = (0.5, 0.7, 0.9)
PROBE_L2 = 1e-3  # weight decay of the probe; strong enough to keep 16k-dimensional fits on ~100 prompts stable
PROBE_ITERATIONS = 100  # LBFGS iterations, fixed so the probe is deterministic and fast
STD_FLOOR = 1e-6  # constant features are divided by this instead of zero
# The generator sees num // 8 pairs per kind; each pair costs 3 DiT samples (a, b, zeros) per sigma.
GENERATOR_PAIRS_DIVISOR = 8

LabelledPrompt = tuple[str, str]  # (prompt, label)


# --------------------------------------------------------------------------------------------- prompt sets
def _colour_prompt(color: str, shape: str) -> str:
    return record("colors", [{"class": shape, "count": 1, "color": color}])["prompt"]


def _count_prompt(shape: str, count: int) -> str:
    if count == 1:
        return record("single_object", [{"class": shape, "count": 1}])["prompt"]
    return record("counting", [{"class": shape, "count": count}], [{"class": shape, "count": count + 1}])["prompt"]


def _relation_prompt(a: str, relation: str, b: str) -> str:
    """"a photo of a A relation a B" (GenEval's position record: B is group 0, A carries the position)."""
    return record("position", [{"class": b, "count": 1}, {"class": a, "count": 1, "position": [relation, 0]}])["prompt"]


COUNTS: tuple[int, ...] = (1, *COUNTING_NUMBERS)


def labelled_prompts(kind: str) -> list[LabelledPrompt]:
    """Every distinct prompt of the probe `kind`, labelled with the first object's colour / shape / count / relation."""
    if kind == "color":
        return [(_colour_prompt(c, s), c) for c in COLORS for s in SHAPES]
    if kind == "shape":
        return ([(_colour_prompt(c, s), s) for c in COLORS for s in SHAPES]
                + [(_count_prompt(s, n), s) for n in COUNTS for s in SHAPES])
    if kind == "count":
        return [(_count_prompt(s, n), str(n)) for n in COUNTS for s in SHAPES]
    if kind == "relation":
        return [(_relation_prompt(a, r, b), r) for a in SHAPES for b in SHAPES if a != b for r in RELATIONS]
    raise ValueError(f"unknown probe kind {kind!r}; known: {', '.join(KINDS)}")


def word_pairs(kind: str) -> list[tuple[str, str]]:
    """Every prompt pair that differs in one word (or relation phrase) of `kind`, the rest of the prompt equal."""
    def pairs(values, make):
        return [(make(u), make(v)) for i, u in enumerate(values) for v in values[i + 1:]]

    if kind == "color":
        return [p for s in SHAPES for p in pairs(COLORS, lambda c, s=s: _colour_prompt(c, s))]
    if kind == "shape":
        return [p for c in COLORS for p in pairs(SHAPES, lambda s, c=c: _colour_prompt(c, s))]
    if kind == "count":  # counts 2-4 only: "a star" vs "two stars" would also change the noun's number
        return [p for s in SHAPES for p in pairs(COUNTING_NUMBERS, lambda n, s=s: _count_prompt(s, n))]
    if kind == "relation":
        return [p for a in SHAPES for b in SHAPES if a != b
                for p in pairs(RELATIONS, lambda r, a=a, b=b: _relation_prompt(a, r, b))]
    raise ValueError(f"unknown pair kind {kind!r}; known: {', '.join(KINDS)}")


def split_prompts(items: list[LabelledPrompt], num: int,
                  rng: random.Random) -> tuple[list[LabelledPrompt], list[LabelledPrompt]]:
    """About `num` prompts, stratified by label, cut into two disjoint halves that both hold every label.

    Each label keeps max(2, num / labels) of its prompts (all when it has fewer), drawn by `rng`.
    """
    by_label: dict[str, list[str]] = defaultdict(list)
    for prompt, label in items:
        by_label[label].append(prompt)
    if any(len(prompts) < 2 for prompts in by_label.values()):
        raise ValueError("every label needs at least two prompts to appear on both sides of the split")
    quota = max(2, round(num / len(by_label)))
    first, second = [], []
    for label in sorted(by_label):
        prompts = sorted(by_label[label])
        rng.shuffle(prompts)
        kept = prompts[:quota]
        half = len(kept) // 2
        first += [(p, label) for p in kept[:half]]
        second += [(p, label) for p in kept[half:]]
    return first, second


# --------------------------------------------------------------------------------------------- the condition
def _model(pipe_or_model):
    """The model of a pipeline (`pipe.model`), or the model-like object itself."""
    inner = getattr(pipe_or_model, "model", None)
    return inner if hasattr(inner, "backbone") else pipe_or_model


@contextmanager
def _eval_mode(module):
    """Eval mode for the block, then the caller's mode back (training code calls this mid-run)."""
    was_training = getattr(module, "training", False)
    if hasattr(module, "train"):
        module.train(False)
    try:
        yield
    finally:
        if hasattr(module, "train"):
            module.train(was_training)


Condition = tuple[torch.Tensor, torch.Tensor]  # one prompt's (L, D) condition and (L,) bool mask


@torch.no_grad()
def condition_states(pipe_or_model, prompts: list[str], batch_size: int = 64) -> list[Condition]:
    """The condition the DiT receives for each prompt: P pairs of (L, D) float32 rows and (L,) bool masks, on the
    model's device; L is N (queries only) or the prompt's own template length plus N."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    model = _model(pipe_or_model)
    rows: list[Condition] = []
    with _eval_mode(model):
        for i in range(0, len(prompts), batch_size):
            cond, mask = model.backbone.condition(list(prompts[i:i + batch_size]))
            mask = mask.bool()
            rows += [(c[m].float(), m[m]) for c, m in zip(cond, mask)]  # padding dropped: each row its own length
    return rows


def stack_left(rows: list[Condition]) -> Condition:
    """Rows of different lengths -> (B, L, D) and (B, L) bool, left-padded with zeros (masked), as the template pads."""
    length = max(c.shape[0] for c, _ in rows)
    cond = torch.stack([F.pad(c, (0, 0, length - c.shape[0], 0)) for c, _ in rows])
    mask = torch.stack([F.pad(m, (length - m.shape[0], 0), value=False) for _, m in rows])
    return cond, mask


def query_part(row: Condition, num_queries: int) -> torch.Tensor:
    """The last N positions of one prompt's condition, (N, D): the query states, the same size for every prompt."""
    return row[0][-num_queries:]


# --------------------------------------------------------------------------------------------- measures
def fit_probe(train_x: torch.Tensor, train_y: torch.Tensor, classes: int | None = None):
    """A multinomial logistic-regression probe with L2, fitted; returns `predict(x) -> (P,) class indices`.

    train_x: (P, ...) features, flattened per row and standardised with the training mean and std; train_y: (P,)
    class indices 0..C-1 (C = `classes`, or max label + 1). Full-batch LBFGS from zero weights for PROBE_ITERATIONS
    iterations: deterministic, about a second for 256 x 16384 features on one CPU thread.
    """
    train_x, train_y = train_x.flatten(1).float().cpu(), train_y.long().cpu()
    mean, std = train_x.mean(0), train_x.std(0, unbiased=False).clamp_min(STD_FLOOR)
    train_x = (train_x - mean) / std
    classes = classes or int(train_y.max()) + 1
    weight = torch.zeros(train_x.shape[1], classes, requires_grad=True)
    bias = torch.zeros(classes, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=PROBE_ITERATIONS, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(train_x @ weight + bias, train_y) + 0.5 * PROBE_L2 * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    weight, bias = weight.detach(), bias.detach()

    def predict(x: torch.Tensor) -> torch.Tensor:
        x = (x.flatten(1).float().cpu() - mean) / std
        return (x @ weight + bias).argmax(1)

    return predict


def probe_accuracy(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor) -> float:
    """Held-out accuracy of a `fit_probe` probe fitted on (train_x, train_y), scored on (test_x, test_y)."""
    classes = int(max(train_y.max(), test_y.max())) + 1
    with torch.no_grad():
        predictions = fit_probe(train_x, train_y, classes)(test_x)
    return float((predictions == test_y.long().cpu()).float().mean())


def pair_difference(cond_a: torch.Tensor, cond_b: torch.Tensor) -> float:
    """Mean over pairs of ||a - b|| / ||a||. cond_a, cond_b: (P, N, D) conditions of the two prompts of each pair."""
    a, b = cond_a.flatten(1).float(), cond_b.flatten(1).float()
    return float(((a - b).norm(dim=1) / a.norm(dim=1).clamp_min(STD_FLOOR)).mean())


def _relative(out: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """(B, ...) x 2 -> (B,) relative distances ||out - other|| / ||out||."""
    return (out - other).flatten(1).norm(dim=1) / out.flatten(1).norm(dim=1).clamp_min(STD_FLOOR)


@torch.no_grad()
def generator_sensitivity(model, pairs: list[tuple[str, str]], seed: int = 0, sigmas: tuple[float, ...] = SIGMAS,
                          batch_size: int = 32, states: dict[str, Condition] | None = None) -> dict[str, float]:
    """How much the DiT's output moves with the prompt: {"prompt_swap", "zero_condition"}, means over pairs and sigmas.

    For each pair (a, b) and each sigma in `sigmas` (default 0.5, 0.7, 0.9, averaged) the DiT runs on one noise
    draw x_t of `model.token_shape`, shared by the pair, with the condition of a, of b, and zeros (the unconditional
    branch as trained): prompt_swap = ||out_a - out_b|| / ||out_a||, zero_condition = ||out_a - out_zero|| / ||out_a||.
    x_t is unit noise scaled to the standard deviation x_t = (1 - sigma) x0 + sigma eps has for a unit-variance
    target. An objective without a timestep (MSE regression) runs once on its fixed input: zeros at timestep 0.
    `states` maps prompts to conditions already computed (`condition_states` rows); missing ones go through the
    backbone.
    """
    model = _model(model)
    if not pairs:
        raise ValueError("generator_sensitivity needs at least one prompt pair")
    states = dict(states or {})
    missing = sorted({p for pair in pairs for p in pair} - states.keys())
    if missing:
        states |= dict(zip(missing, condition_states(model, missing, batch_size)))
    objective = model.objective
    flow = hasattr(objective, "timestep")
    parameters = getattr(model.generator, "parameters", None)
    dtype = next(parameters()).dtype if parameters else torch.float32  # the DiT's own precision (fp32, bf16, ...)
    noise_seed = torch.Generator().manual_seed(seed)
    swaps, zeros = [], []
    with _eval_mode(model):
        for first in range(0, len(pairs), batch_size):
            chunk = pairs[first:first + batch_size]
            cond, mask = stack_left([states[a] for a, _ in chunk] + [states[b] for _, b in chunk])
            cond_a, mask_a = cond[:len(chunk)], mask[:len(chunk)]
            cond = torch.cat([cond, torch.zeros_like(cond_a)]).to(dtype)  # zeros: the dropped condition as trained
            mask = torch.cat([mask, mask_a])
            noise = torch.randn((len(chunk), *model.token_shape), generator=noise_seed).to(cond.device, dtype)
            for sigma in sigmas if flow else (0.0,):
                scale = ((1 - sigma) ** 2 + sigma ** 2) ** 0.5
                x_t = (noise * scale if flow else torch.zeros_like(noise)).repeat(3, *[1] * (noise.dim() - 1))
                sigma_batch = torch.full((x_t.shape[0],), sigma, device=cond.device)  # fp32, as in training
                timestep = objective.timestep(sigma_batch) if flow else torch.zeros_like(sigma_batch)
                out_a, out_b, out_zero = model.generator(x_t, timestep, cond, mask).float().chunk(3)
                swaps.append(_relative(out_a, out_b))
                zeros.append(_relative(out_a, out_zero))
    return {"prompt_swap": float(torch.cat(swaps).mean()), "zero_condition": float(torch.cat(zeros).mean())}


# --------------------------------------------------------------------------------------------- the report
def _sample(items: list, count: int, rng: random.Random) -> list:
    return items if len(items) <= count else rng.sample(items, count)


def _two_way_probe(states: dict[str, torch.Tensor], first: list[LabelledPrompt], second: list[LabelledPrompt]) -> float:
    """Fit on one half and score on the other, both ways: every prompt is scored once, by a probe that never saw it."""
    labels = {label: i for i, label in enumerate(sorted({label for _, label in first + second}))}

    def tensors(items):  # -> (P, N, D) conditions, (P,) label indices
        return torch.stack([states[p] for p, _ in items]), torch.tensor([labels[label] for _, label in items])

    (x1, y1), (x2, y2) = tensors(first), tensors(second)
    hits = probe_accuracy(x1, y1, x2, y2) * len(second) + probe_accuracy(x2, y2, x1, y1) * len(first)
    return hits / (len(first) + len(second))


def condition_report(pipe_or_model, num: int = 256, seed: int = 0, batch_size: int = 64) -> dict:
    """{"probe": {kind: accuracy}, "pair_difference": {kind: float}, "generator": {"prompt_swap", "zero_condition"},
    "prompts": int}; kinds are color, shape, count, relation.

    `num` is about how many prompts each probe uses (all of a smaller space) and the most pairs per kind for
    pair_difference; the generator sees num // 8 of those pairs per kind. Everything drawn is seeded by `seed`.
    `prompts` counts the distinct prompts run through the backbone.
    """
    if num < 1:
        raise ValueError(f"num must be at least 1, got {num}")
    rng = random.Random(seed)
    splits = {kind: split_prompts(labelled_prompts(kind), num, rng) for kind in KINDS}
    pairs = {kind: _sample(word_pairs(kind), num, rng) for kind in KINDS}
    generator_pairs = [p for kind in KINDS for p in _sample(pairs[kind], max(1, num // GENERATOR_PAIRS_DIVISOR), rng)]
    prompts = sorted({p for first, second in splits.values() for p, _ in first + second}
                     | {p for kind_pairs in pairs.values() for pair in kind_pairs for p in pair})
    states = dict(zip(prompts, condition_states(pipe_or_model, prompts, batch_size)))
    num_queries = _model(pipe_or_model).backbone.num_queries
    queries = {prompt: query_part(row, num_queries) for prompt, row in states.items()}

    probe = {kind: _two_way_probe(queries, first, second) for kind, (first, second) in splits.items()}
    difference = {kind: pair_difference(torch.stack([queries[a] for a, _ in kind_pairs]),
                                        torch.stack([queries[b] for _, b in kind_pairs]))
                  for kind, kind_pairs in pairs.items()}
    generator = generator_sensitivity(pipe_or_model, generator_pairs, seed, batch_size=batch_size, states=states)
    return {"probe": probe, "pair_difference": difference, "generator": generator, "prompts": len(prompts)}


def chance_levels() -> dict[str, float]:
    """1 / number of labels, per probe kind: the accuracy of a probe that reads nothing."""
    return {kind: 1 / len({label for _, label in labelled_prompts(kind)}) for kind in KINDS}
